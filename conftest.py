"""Root pytest setup: 8 fake CPU devices for the sharding tests; must run before JAX is imported."""

import os

# The empty YNN fusion setting works around an XLA:CPU (jaxlib 0.10) crash compiling the RWKV chunked
# gradient at strong decays; see modernlm_jax/main.py::apply_cpu_workarounds.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

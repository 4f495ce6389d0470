"""Splash (block-sparse flash) attention on TPU through `jax.experimental.pallas.ops.tpu`.

The Pallas TPU kernels are imported lazily and guarded: importing this module never fails on CPU or
GPU, `splash_available()` says whether the kernel can be built, and `attention.select_attention_impl`
only picks "splash" on a TPU backend.

Options: segment ids (packed documents) and per-head sink logits are native to the kernel. ALiBi is not:
splash takes masks (block-sparse, boolean), not an additive bias, so an ALiBi model on TPU falls back to
XLA attention. Supporting it needs a fork of the kernel's inner loop adding -slope_h·|i - j| to the
scores (what `kernels/flash.py` does for GPU), not a new mask. Tests run the same kernel on CPU through Pallas' interpreter
(`interpret=True`).

A Mosaic kernel cannot be partitioned automatically by XLA, so under a device mesh the call is
wrapped in `shard_map`: rows split over the batch axes, heads over the tensor axis. The mesh comes
from the tracing context (`jax.set_mesh(mesh)`, which the training loop and the benchmark enter on
TPU); a single device needs no mesh.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# Block edge of the kernel's tiles; sequences must be a multiple of it (select_attention_impl checks).
SPLASH_BLOCK = 128
_MAX_BLOCK = 512  # larger tiles amortise per-block overhead; 512 is the kernel authors' usual choice
# Mesh axis names of train/mesh.py (model/ must not import train/): rows over data×fsdp, heads over tensor.
_BATCH_AXES = ("data", "fsdp")
_HEAD_AXIS = "tensor"


def _import_splash():
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

  return kernel_lib, mask_lib


def splash_available() -> tuple[bool, str]:
  """(True, "") when the splash kernel can be imported, else (False, why)."""
  try:
    _import_splash()
  except Exception as e:  # noqa: BLE001 - any import-time failure means "use another kernel"
    return False, f"splash attention unavailable: {type(e).__name__}: {e}"
  return True, ""


def splash_seq_ok(seq_len: int | None) -> bool:
  return seq_len is None or (seq_len > 0 and seq_len % SPLASH_BLOCK == 0)


def _block(seq_len: int) -> int:
  b = min(_MAX_BLOCK, seq_len)
  while seq_len % b:  # halving keeps b a multiple of SPLASH_BLOCK because seq_len is one
    b //= 2
  return b


@functools.lru_cache(maxsize=32)
def _kernel(num_heads: int, seq_len: int, interpret: bool):
  """Causal multi-head splash kernel for [H, T, Dh] inputs (built once per shape: mask tables are numpy)."""
  kernel_lib, mask_lib = _import_splash()
  b = _block(seq_len)
  mask = mask_lib.MultiHeadMask([mask_lib.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
  sizes = kernel_lib.BlockSizes(
    block_q=b,
    block_kv=b,
    block_kv_compute=b,
    block_q_dkv=b,
    block_kv_dkv=b,
    block_kv_dkv_compute=b,
    block_q_dq=b,
    block_kv_dq=b,
  )
  return kernel_lib.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_splash(q_BTHD, k_BTHD, v_BTHD, segment_ids_BT, sink_H, interpret: bool):
  kernel_lib, _ = _import_splash()
  B, T, H, Dh = q_BTHD.shape
  kernel = _kernel(H, T, interpret)
  # splash applies no softmax scale of its own
  q_BHTD = jnp.swapaxes(q_BTHD * jnp.asarray(1.0 / math.sqrt(Dh), q_BTHD.dtype), 1, 2)
  k_BHTD, v_BHTD = jnp.swapaxes(k_BTHD, 1, 2), jnp.swapaxes(v_BTHD, 1, 2)
  # Sink logits are native to splash (one per query head, compared with the already scaled scores).
  sinks = None if sink_H is None else sink_H.astype(jnp.float32)
  if segment_ids_BT is None:
    out_BHTD = jax.vmap(lambda q, k, v: kernel(q, k, v, sinks=sinks))(q_BHTD, k_BHTD, v_BHTD)
  else:
    seg_BT = segment_ids_BT.astype(jnp.int32)
    out_BHTD = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=kernel_lib.SegmentIds(q=s, kv=s), sinks=sinks))(
      q_BHTD, k_BHTD, v_BHTD, seg_BT
    )
  return jnp.swapaxes(out_BHTD, 1, 2)


def splash_attention(q_BTHD, k_BTHD, v_BTHD, segment_ids_BT=None, *, sink_H=None, interpret: bool = False):
  """Causal attention (within segments when `segment_ids_BT` is given, with per-head sink logits when
  `sink_H` is); returns [B, T, H, Dh] in q's dtype."""
  B, T, H, _ = q_BTHD.shape
  if not splash_seq_ok(T):
    raise ValueError(
      f"splash attention needs a sequence length divisible by {SPLASH_BLOCK}, got {T}; "
      "change data.seq_len or set model.attention_impl=xla"
    )
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    if jax.device_count() > 1 and not interpret:
      raise ValueError(
        "splash attention on several devices must be traced under the device mesh; wrap the jitted "
        "call in `with jax.set_mesh(mesh):` (the training loop does this on TPU)"
      )
    return _local_splash(q_BTHD, k_BTHD, v_BTHD, segment_ids_BT, sink_H, interpret)
  batch_axes = tuple(a for a in _BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  rows = math.prod(mesh.shape[a] for a in batch_axes)
  if B % rows:
    batch_axes = ()
  head_axis = _HEAD_AXIS if _HEAD_AXIS in mesh.axis_names and H % mesh.shape[_HEAD_AXIS] == 0 else None
  row_spec = batch_axes or None
  qkv_spec = P(row_spec, None, head_axis, None)
  fn = functools.partial(_local_splash, interpret=interpret)
  seg_spec, sink_spec = P(row_spec, None), P(head_axis)
  if segment_ids_BT is None and sink_H is None:
    return jax.shard_map(
      lambda q, k, v: fn(q, k, v, None, None), mesh=mesh, in_specs=(qkv_spec,) * 3, out_specs=qkv_spec, check_vma=False
    )(q_BTHD, k_BTHD, v_BTHD)
  if sink_H is None:
    return jax.shard_map(
      lambda q, k, v, s: fn(q, k, v, s, None),
      mesh=mesh,
      in_specs=(qkv_spec,) * 3 + (seg_spec,),
      out_specs=qkv_spec,
      check_vma=False,
    )(q_BTHD, k_BTHD, v_BTHD, segment_ids_BT)
  if segment_ids_BT is None:
    return jax.shard_map(
      lambda q, k, v, h: fn(q, k, v, None, h),
      mesh=mesh,
      in_specs=(qkv_spec,) * 3 + (sink_spec,),
      out_specs=qkv_spec,
      check_vma=False,
    )(q_BTHD, k_BTHD, v_BTHD, sink_H)
  return jax.shard_map(
    fn, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec, sink_spec), out_specs=qkv_spec, check_vma=False
  )(q_BTHD, k_BTHD, v_BTHD, segment_ids_BT, sink_H)


def kernel_mesh_context(mesh, backend: str | None = None):
  """The context to trace a model under: `jax.set_mesh(mesh)` on TPU (splash needs the mesh for shard_map),
  nothing elsewhere, so CPU and GPU tracing is untouched."""
  import contextlib

  if (backend or jax.default_backend()) != "tpu" or mesh is None:
    return contextlib.nullcontext()
  set_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh
  return set_mesh(mesh)

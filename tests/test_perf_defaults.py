"""Speed-related defaults: the gradient norm is computed once and shared with clipping (same arithmetic and
optimizer state as optax's clip), and the jaxlib-0.10 YNN-fusion workaround is scoped to runs that may build RWKV."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from modernlm_jax.main import needs_ynn_workaround
from modernlm_jax.train.optim import clip_by_shared_global_norm, update_with_grad_norm


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "unclipped"])
def test_shared_norm_clip_equals_optax_clip(max_norm):
  params = {"a": jnp.ones((4, 4)), "b": jnp.arange(3.0)}
  grads = {"a": jnp.full((4, 4), 3.0), "b": jnp.arange(3.0) * 5}
  ref = optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(1e-2))
  new = optax.chain(clip_by_shared_global_norm(max_norm), optax.adamw(1e-2))
  s_ref, s_new = ref.init(params), new.init(params)
  assert jax.tree.structure(s_ref) == jax.tree.structure(s_new)  # old checkpoints restore unchanged
  u_ref, _ = ref.update(grads, s_ref, params)
  u_new, _ = update_with_grad_norm(new, grads, s_new, params, optax.global_norm(grads))
  u_self, _ = new.update(grads, s_new, params)  # without the shared norm it computes its own
  for a, b, c in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_ref), jax.tree.leaves(u_self)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, b)


def test_shared_norm_is_the_one_used():
  """A different norm handed over changes the clip: proof the optimizer does not recompute it."""
  grads = {"a": jnp.full((2,), 3.0)}
  opt = clip_by_shared_global_norm(1.0)
  out, _ = opt.update(grads, opt.init(grads), grad_norm=jnp.float32(6.0))
  np.testing.assert_allclose(out["a"], 0.5)


def test_plain_optimizer_still_works_with_update_with_grad_norm():
  opt = optax.sgd(0.1)  # not an ExtraArgs transformation: the norm is simply not passed
  g = {"a": jnp.ones(2)}
  u, _ = update_with_grad_norm(opt, g, opt.init(g), g, jnp.float32(1.0))
  np.testing.assert_allclose(u["a"], -0.1)


@pytest.mark.parametrize(
  "argv,needed",
  [
    (["--config=configs/pretrain.py"], False),
    (["--config=configs/bench.py:gpt2-125m", "--config.bench.steps=3"], False),
    (["--config", "configs/pretrain.py:modern-30m"], False),
    (["--config=configs/pretrain.py:hybrid-tiny"], True),
    (["--config=configs/pretrain.py", "--config.model.layer_pattern=ssm,rwkv"], True),
    (["--config=configs/compare.py:tiny"], True),  # comparison arms include the hybrid
    (["--config=configs/sft.py", "--config.init_from=runs/x"], True),  # may start from a hybrid run
  ],
)
def test_ynn_workaround_only_where_rwkv_may_be_built(argv, needed):
  assert needs_ynn_workaround(argv) is needed

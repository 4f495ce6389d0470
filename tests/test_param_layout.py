"""Optional parameter layouts (`model.fused_qkv`, `model.scan_layers`): the same function as the default
tree, lossless conversion both ways, weight-decay masks, decoding caches, HF GPT-2 export, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.model import LanguageModel, ModelConfig, init_cache, init_params, param_logical_axes
from modernlm_jax.model.param_layout import SCANNED_LAYERS, from_default_layout, to_default_layout
from modernlm_jax.train.optim import decay_mask

BASE = ModelConfig(vocab_size=61, max_len=32, n_layers=3, d_model=32, n_heads=4, d_ff=64, family="gpt2")
LAYOUTS = {
  "scan": dict(scan_layers=True),
  "fused": dict(fused_qkv=True),
  "scan+fused": dict(scan_layers=True, fused_qkv=True),
}


def _equal_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_default_tree_is_unchanged():
  params = init_params(BASE, 0)
  assert sorted(params) == ["embed", "final_norm", "layer_0", "layer_1", "layer_2", "pos_embed"]
  assert sorted(params["layer_0"]["mixer"]) == [
    "key_bias",
    "key_kernel",
    "out_bias",
    "out_kernel",
    "query_bias",
    "query_kernel",
    "value_bias",
    "value_kernel",
  ]


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_layout_is_the_same_function_and_converts_losslessly(layout, family):
  base = (
    BASE
    if family == "gpt2"
    else BASE.replace(
      family="modern", positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False
    )
  )
  cfg = base.replace(**LAYOUTS[layout])
  p0 = init_params(base, 0)
  p = from_default_layout(p0, cfg)
  fresh = init_params(cfg, 0)
  assert jax.tree.structure(p) == jax.tree.structure(fresh)
  assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, fresh)
  back, back_cfg = to_default_layout(p, cfg)
  assert back_cfg == base
  _equal_trees(back, p0)
  x = jax.random.randint(jax.random.key(1), (2, 12), 0, 61)
  np.testing.assert_allclose(
    LanguageModel(cfg).apply({"params": p}, x), LanguageModel(base).apply({"params": p0}, x), atol=1e-5
  )
  # the decode path (the cache is stacked too under scan_layers)
  cache = init_cache(cfg, 2, 16)
  logits, cache = LanguageModel(cfg).apply({"params": p}, x[:, :5], cache=cache)
  np.testing.assert_allclose(logits, LanguageModel(base).apply({"params": p0}, x[:, :5]), atol=1e-5)
  if cfg.scan_layers:
    assert cache[SCANNED_LAYERS]["k"].shape[0] == cfg.n_layers
    assert param_logical_axes(cfg)[SCANNED_LAYERS]["mlp_norm"]["scale"] == jax.sharding.PartitionSpec("layers", "norm")


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_decay_mask_is_the_default_one_in_any_layout(layout):
  cfg = BASE.replace(**LAYOUTS[layout])
  params = init_params(cfg, 0)
  mask = decay_mask(params, decay_embeddings=False)
  as_arrays = jax.tree.map(lambda leaf, m: np.full(leaf.shape, m), params, mask)
  default_mask, _ = to_default_layout(as_arrays, cfg)
  expected = decay_mask(init_params(BASE, 0), decay_embeddings=False)
  assert jax.tree.map(lambda m: bool(np.all(m)), default_mask) == expected


def test_scan_layers_rejects_hybrid_stacks():
  with pytest.raises(ValueError, match="scan_layers"):
    BASE.replace(layer_pattern=("attn", "ssm", "attn"), scan_layers=True)


def test_hf_gpt2_export_and_import_map_the_optional_layouts():
  from modernlm_jax.interop import hf_gpt2

  cfg = BASE.replace(scan_layers=True, fused_qkv=True)
  p0 = init_params(BASE, 0)
  p = from_default_layout(p0, cfg)
  state, state0 = hf_gpt2.params_to_hf_state(p, cfg), hf_gpt2.params_to_hf_state(p0, BASE)
  assert state.keys() == state0.keys()
  for k in state:
    np.testing.assert_array_equal(state[k], state0[k])
  back = hf_gpt2.hf_state_to_params(hf_gpt2.normalize_hf_names(state), cfg)
  _equal_trees(back, jax.tree.map(np.asarray, p))


def test_checkpoint_roundtrip_of_a_scanned_fused_train_state(tmp_path):
  import optax

  from modernlm_jax.train.checkpoint import Checkpointer
  from modernlm_jax.train.step import create_state

  cfg = BASE.replace(scan_layers=True, fused_qkv=True)
  state = create_state(cfg, optax.adamw(1e-3), seed=0)
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  try:
    ckpt.save(0, state, {}, {}, force=True)
    ckpt.wait()
    restored = ckpt.restore(jax.eval_shape(lambda: state))[0]
  finally:
    ckpt.close()
  _equal_trees(restored.params, state.params)

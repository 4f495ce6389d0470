"""Core model: shapes, causality, cache decoding, positions, options, kernels, presets."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.model import (
  LanguageModel,
  ModelConfig,
  attention,
  init_cache,
  init_params,
  param_logical_axes,
  positions,
  scales,
)

TINY = dict(vocab_size=61, max_len=32, n_layers=2, d_model=32, n_heads=4, d_ff=64)
VARIANTS = {
  "gpt2": dict(family="gpt2"),
  "modern": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False),
  "alibi": dict(positions="alibi", norm="rmsnorm", mlp="swiglu"),
  "rope+alibi+gate": dict(positions="rope+alibi", norm="rmsnorm", mlp="swiglu", attn_gate="elementwise"),
  "sinks+headgate+qknorm": dict(positions="rope", attn_sinks=True, attn_gate="headwise", qk_norm=True),
}


class JittedModel:
  """model.apply under jit (eager op-by-op dispatch is what makes model tests slow on CPU)."""

  def __init__(self, cfg):
    self.module = LanguageModel(cfg)
    self.apply = jax.jit(self.module.apply, static_argnames=("stream_sinks", "return_hidden"))


def make(variant="modern", **overrides):
  cfg = ModelConfig(**{**TINY, **VARIANTS[variant], **overrides})
  return cfg, JittedModel(cfg), init_params(cfg, 0)


def tokens(b=2, t=12, seed=1, vocab=61):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_shape_and_finite(variant):
  cfg, model, params = make(variant)
  logits = model.apply({"params": params}, tokens())
  chex.assert_shape(logits, (2, 12, cfg.vocab_size))
  chex.assert_tree_all_finite(logits)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causality(variant):
  _, model, params = make(variant)
  x = tokens()
  y = x.at[:, 7:].set((x[:, 7:] + 5) % 61)
  a = model.apply({"params": params}, x)
  b = model.apply({"params": params}, y)
  chex.assert_trees_all_close(a[:, :7], b[:, :7], atol=1e-5)
  assert not np.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_decode_equals_full_forward(variant):
  cfg, model, params = make(variant)
  x = tokens(t=10)
  full = model.apply({"params": params}, x)
  cache = init_cache(cfg, batch_size=2, max_len=16)
  # prefill 4 tokens at once, then one token at a time
  pos = jnp.broadcast_to(jnp.arange(10)[None], (2, 10))
  logits, cache = model.apply({"params": params}, x[:, :4], positions=pos[:, :4], cache=cache)
  steps = [logits]
  for t in range(4, 10):
    logits, cache = model.apply({"params": params}, x[:, t : t + 1], positions=pos[:, t : t + 1], cache=cache)
    steps.append(logits)
  chex.assert_trees_all_close(jnp.concatenate(steps, axis=1), full, atol=2e-4, rtol=2e-4)


@pytest.mark.slow
def test_streaming_cache_matches_linear_cache_within_capacity():
  cfg, model, params = make("modern")
  x = tokens(t=8)
  out = {}
  for sinks in (None, 2):
    cache = init_cache(cfg, batch_size=2, max_len=8)
    seq = []
    for t in range(8):
      p = jnp.full((2, 1), t, jnp.int32)
      logits, cache = model.apply({"params": params}, x[:, t : t + 1], positions=p, cache=cache, stream_sinks=sinks)
      seq.append(logits)
    out[sinks] = jnp.concatenate(seq, axis=1)
  chex.assert_trees_all_close(out[None], out[2], atol=1e-5)


@pytest.mark.slow
def test_streaming_cache_keeps_sinks_and_rolls_window():
  cfg, model, params = make("modern")
  cache = init_cache(cfg, batch_size=1, max_len=6)
  for t in range(11):
    _, cache = model.apply(
      {"params": params}, jnp.array([[t % 61]]), positions=jnp.array([[t]]), cache=cache, stream_sinks=2
    )
  kept = sorted(np.asarray(cache["pos"][0]).tolist())
  assert kept == [0, 1, 7, 8, 9, 10]  # two sinks + the last four tokens


def test_padding_positions_do_not_write_cache():
  cfg, model, params = make("modern")
  cache = init_cache(cfg, batch_size=1, max_len=8)
  _, cache = model.apply({"params": params}, jnp.array([[3, 4]]), positions=jnp.array([[-1, 0]]), cache=cache)
  assert np.asarray(cache["pos"][0]).tolist() == [0] + [-1] * 7


@pytest.mark.slow
def test_segment_ids_isolate_documents():
  _, model, params = make("modern")
  x = tokens(b=1, t=10)
  seg = jnp.array([[1] * 4 + [2] * 6])
  pos = jnp.array([list(range(4)) + list(range(6))])
  packed = model.apply({"params": params}, x, positions=pos, segment_ids=seg)
  alone = model.apply({"params": params}, x[:, 4:])
  chex.assert_trees_all_close(packed[:, 4:], alone, atol=1e-5)


def test_rope_depends_only_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))

  def score(pq, pk):
    return jnp.sum(positions.apply_rope(q, jnp.array([[pq]])) * positions.apply_rope(k, jnp.array([[pk]])))

  np.testing.assert_allclose(score(5, 2), score(105, 102), rtol=1e-4)
  np.testing.assert_allclose(score(0, 0), jnp.sum(q * k), rtol=1e-5)
  assert not np.isclose(score(5, 2), score(5, 4))


def test_rope_computed_in_float32_then_cast():
  x = jnp.ones((1, 1, 1, 8), jnp.bfloat16)
  y = positions.apply_rope(x, jnp.array([[3000]]))
  assert y.dtype == jnp.bfloat16
  ref = positions.apply_rope(x.astype(jnp.float32), jnp.array([[3000]]))
  np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=2e-2)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 6, 12])
def test_alibi_slopes_formula(n):
  slopes = np.asarray(positions.alibi_slopes(n))
  if n & (n - 1) == 0:
    expected = [2 ** (-8 * (i + 1) / n) for i in range(n)]
  else:
    closest = 2 ** int(np.floor(np.log2(n)))
    expected = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
    expected += [2 ** (-8 * (i + 1) / (2 * closest)) for i in range(2 * closest)][0::2][: n - closest]
  np.testing.assert_allclose(slopes, expected, rtol=1e-6)
  bias = positions.alibi_bias(jnp.array([[0, 1, 2]]), jnp.array([[0, 1, 2]]), n)
  chex.assert_shape(bias, (1, n, 3, 3))
  np.testing.assert_allclose(bias[0, :, 2, 0], -2 * slopes, rtol=1e-6)


@pytest.mark.slow
def test_gate_and_sinks_change_parameters_and_outputs():
  _, model_plain, p_plain = make("modern")
  cfg_g, model_g, p_g = make("modern", attn_gate="elementwise")
  assert "gate_kernel" in p_g["layer_0"]["mixer"] and "gate_kernel" not in p_plain["layer_0"]["mixer"]
  chex.assert_shape(p_g["layer_0"]["mixer"]["gate_kernel"], (32, 4, 8))
  _, _, p_h = make("modern", attn_gate="headwise")
  chex.assert_shape(p_h["layer_0"]["mixer"]["gate_kernel"], (32, 4))
  cfg_s, model_s, p_s = make("modern", attn_sinks=True)
  chex.assert_shape(p_s["layer_0"]["mixer"]["sink_logit"], (4,))
  x = tokens()
  # A very negative sink logit removes the sink: output equals the sink-free model with the same weights.
  no_sink = jax.tree_util.tree_map(lambda a: a, p_s)
  for i in range(2):
    no_sink[f"layer_{i}"]["mixer"]["sink_logit"] = jnp.full((4,), -1e9)
  shared = {k: v for k, v in no_sink.items()}
  for i in range(2):
    shared[f"layer_{i}"] = dict(
      shared[f"layer_{i}"], mixer={k: v for k, v in no_sink[f"layer_{i}"]["mixer"].items() if k != "sink_logit"}
    )
  chex.assert_trees_all_close(
    model_s.apply({"params": no_sink}, x), model_plain.apply({"params": shared}, x), atol=1e-5
  )
  # A zero sink logit takes probability mass: outputs differ.
  assert not np.allclose(model_s.apply({"params": p_s}, x), model_plain.apply({"params": shared}, x), atol=1e-4)


@pytest.mark.slow
def test_sink_reference_attention_matches_explicit_extra_key():
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 3, 2, 4)) for i in range(3))
  sink = jnp.array([0.5, -1.0])
  mask = jnp.tril(jnp.ones((3, 3), bool))[None]
  out = attention.reference_attention(q, k, v, mask, sink_H=sink)
  s = jnp.einsum("bthd,bshd->bhts", q, k) / 2.0
  s = jnp.where(mask[:, None], s, -jnp.inf)
  s = jnp.concatenate([s, jnp.broadcast_to(sink[None, :, None, None], (1, 2, 3, 1))], axis=-1)
  p = jax.nn.softmax(s, axis=-1)[..., :3]
  chex.assert_trees_all_close(out, jnp.einsum("bhts,bshd->bthd", p, v), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gpt2", "modern", "alibi", "rope+alibi+gate"])
@pytest.mark.parametrize("use_segments", [False, True])
def test_xla_kernel_matches_reference(variant, use_segments):
  _, model_ref, params = make(variant, attention_impl="reference")
  _, model_xla, _ = make(variant, attention_impl="xla")
  x = tokens()
  kwargs = {}
  if use_segments:
    kwargs = dict(
      segment_ids=jnp.array([[1] * 5 + [2] * 7] * 2), positions=jnp.array([list(range(5)) + list(range(7))] * 2)
    )
  chex.assert_trees_all_close(
    model_xla.apply({"params": params}, x, **kwargs), model_ref.apply({"params": params}, x, **kwargs), atol=1e-4
  )


def test_cudnn_kernel_matches_reference_or_is_unavailable_here():
  cfg = ModelConfig(**{**TINY, **VARIANTS["modern"]}, attention_impl="cudnn", dtype="bfloat16")
  impl, reason = attention.select_attention_impl(cfg, backend=jax.default_backend(), has_segments=False, decoding=False)
  if jax.default_backend() != "gpu":
    assert impl == "xla" and "backend is cpu" in reason
    pytest.skip("cuDNN flash attention needs an NVIDIA GPU; selection fallback checked")
  _, model_ref, params = make("modern", attention_impl="reference", dtype="bfloat16")
  model_cudnn = LanguageModel(cfg)
  chex.assert_trees_all_close(
    model_cudnn.apply({"params": params}, tokens()), model_ref.apply({"params": params}, tokens()), atol=5e-2, rtol=5e-2
  )


def test_kernel_selection_logic():
  base = ModelConfig(**{**TINY, **VARIANTS["modern"]}, dtype="bfloat16")
  sel = lambda cfg, **kw: attention.select_attention_impl(
    cfg, **{"backend": "gpu", "has_segments": False, "decoding": False, **kw}
  )[0]
  assert sel(base) == "cudnn"
  assert sel(base, backend="cpu") == "xla"
  assert sel(base, has_segments=True) == "xla"
  assert sel(base, decoding=True) == "xla"
  assert sel(base.replace(dtype="float32")) == "xla"
  assert sel(base.replace(positions="alibi")) == "xla"
  assert sel(base.replace(attn_sinks=True)) == "reference"
  assert sel(base.replace(attention_impl="reference")) == "reference"


@pytest.mark.slow
class JitTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_forward(self):
    cfg, model, params = make("rope+alibi+gate")
    x = tokens()
    out = self.variant(lambda p, t: model.module.apply({"params": p}, t))(params, x)
    ref = model.apply({"params": params}, x)
    chex.assert_trees_all_close(out, ref, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
  cfg, model, params = make("modern", dtype="bfloat16")
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(params))
  logits = model.apply({"params": params}, tokens())
  assert logits.dtype == jnp.float32
  _, model32, _ = make("modern")
  np.testing.assert_allclose(logits, model32.apply({"params": params}, tokens()), atol=0.15)


def test_every_parameter_has_logical_axes():
  cfg, _, params = make("sinks+headgate+qknorm")
  axes = param_logical_axes(cfg)
  flat_p = jax.tree_util.tree_leaves_with_path(params)
  flat_a = dict(jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
  for path, leaf in flat_p:
    spec = flat_a[path]
    assert len(spec) == leaf.ndim and all(isinstance(a, str) for a in spec), (path, spec)


@pytest.mark.slow
def test_return_hidden_and_logits_from_hidden():
  from modernlm_jax.model import logits_from_hidden

  for variant in ("gpt2", "modern"):
    cfg, model, params = make(variant)
    h = model.apply({"params": params}, tokens(), return_hidden=True)
    chex.assert_shape(h, (2, 12, 32))
    chex.assert_trees_all_close(
      logits_from_hidden(params, cfg, h), model.apply({"params": params}, tokens()), atol=1e-5
    )


@pytest.mark.slow
def test_remat_does_not_change_outputs():
  _, model, params = make("modern")
  _, model_r, _ = make("modern", remat="full")
  loss = lambda m: lambda p: jnp.mean(m.module.apply({"params": p}, tokens()) ** 2)
  chex.assert_trees_all_close(
    jax.jit(jax.grad(loss(model_r)))(params), jax.jit(jax.grad(loss(model)))(params), atol=1e-6
  )


# ---- presets and the scale table -----------------------------------------------------------------


@pytest.mark.slow
def test_scale_table_matched_within_two_percent():
  rows = scales.scale_table()
  assert len(rows) == 2 * len(scales.SCALES) or len(rows) >= 10
  for r in rows:
    assert abs(r["vs_gpt2"]) <= 0.02, r
  by_name = {r["name"]: r for r in rows}
  assert by_name["gpt2-125m"]["total"] == 124_439_808
  m253 = scales.preset("modern-253m")
  assert (m253.n_layers, m253.d_model, m253.n_heads, m253.vocab_size, m253.tie_embeddings) == (
    12,
    1024,
    16,
    50257,
    False,
  )
  assert 250e6 < by_name["modern-253m"]["total"] < 256e6


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"{f}-{s}" for s in ("tiny", "3.5m", "8m", "30m") for f in ("gpt2", "modern")])
def test_small_presets_run_forward_on_cpu(name):
  cfg = scales.preset(name)
  params = init_params(cfg, 0)
  logits = jax.jit(LanguageModel(cfg).apply)({"params": params}, jnp.zeros((1, 16), jnp.int32))
  chex.assert_shape(logits, (1, 16, cfg.vocab_size))
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", ["gpt2-125m", "modern-125m", "gpt2-253m", "modern-253m"])
def test_large_presets_by_eval_shape(name):
  cfg = scales.preset(name)
  out = jax.eval_shape(
    lambda: LanguageModel(cfg).apply({"params": init_params(cfg, jax.random.key(0))}, jnp.zeros((2, 1024), jnp.int32))
  )
  assert out.shape == (2, 1024, cfg.vocab_size)


@pytest.mark.parametrize(
  "field,value",
  [
    ("positions", "sinusoid"),
    ("norm", "batchnorm"),
    ("mlp", "relu"),
    ("attention_impl", "flash2"),
    ("attn_gate", "yes"),
  ],
)
def test_bad_option_names_list_valid_ones(field, value):
  with pytest.raises(ValueError, match=r"choose one of \["):
    ModelConfig(**{**TINY, field: value})


def test_unknown_preset_and_key_errors():
  with pytest.raises(ValueError, match="valid presets"):
    scales.preset("transformerxl-8m")
  with pytest.raises(ValueError, match="valid keys"):
    ModelConfig.from_dict({**TINY, "n_layer": 3})

"""Our Pallas flash attention (kernels/flash.py), run by the Pallas interpreter on CPU, against the einsum
reference: forward and gradients, with packed-document segments, ALiBi, sinks and all of them at once,
in float32 and bfloat16; the model path that uses it; and the kernel selector that picks it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.model import LanguageModel, ModelConfig, init_params, tpu_attention
from modernlm_jax.model import positions as pos_lib
from modernlm_jax.model.attention import reference_attention, select_attention_impl
from modernlm_jax.model.kernels.flash import flash_attention

B, T, H, D = 2, 40, 2, 16  # T not a multiple of the 16-wide test block: exercises the padding
SEG = np.array([[0] * 15 + [1] * 20 + [2] * 5, [0] * T])
POS = np.array([list(range(15)) + list(range(20)) + list(range(5)), list(range(T))])  # positions restart per document
OPTIONS = {
  "causal": {},
  "segments": dict(segments=True),
  "alibi": dict(alibi=True),
  "sinks": dict(sinks=True),
  "all": dict(segments=True, alibi=True, sinks=True),
}


def _inputs(dtype):
  ks = jax.random.split(jax.random.key(3), 4)
  q, k, v, w = (jax.random.normal(x, (B, T, H, D), jnp.float32) for x in ks)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), w, jnp.asarray([0.7, -1.5])


def _pair(segments=False, alibi=False, sinks=False):
  """(reference fn, flash fn) of (q, k, v, sink) for one option set."""
  seg = jnp.asarray(SEG) if segments else None
  pos = jnp.asarray(POS) if segments else jnp.broadcast_to(jnp.arange(T)[None], (B, T))

  def ref(q, k, v, sink):
    mask = jnp.tril(jnp.ones((T, T), bool))[None]
    if segments:
      mask = mask & (seg[:, :, None] == seg[:, None, :])
    bias = pos_lib.alibi_bias(pos, pos, H) if alibi else None
    return reference_attention(q, k, v, mask, bias, sink if sinks else None)

  def fl(q, k, v, sink):
    return flash_attention(
      q,
      k,
      v,
      segment_ids_BT=seg,
      positions_BT=pos,
      alibi_slopes_H=pos_lib.alibi_slopes(H) if alibi else None,
      sink_H=sink if sinks else None,
      block=16,
      interpret=True,
    )

  return ref, fl


@pytest.mark.slow
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)], ids=["f32", "bf16"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_flash_forward_and_gradients_match_reference(option, dtype, atol):
  q, k, v, w, sink = _inputs(dtype)
  ref, fl = _pair(**OPTIONS[option])
  out_ref, out = ref(q, k, v, sink), fl(q, k, v, sink)
  assert out.dtype == q.dtype and out.shape == (B, T, H, D)
  chex.assert_trees_all_close(out.astype(jnp.float32), out_ref.astype(jnp.float32), atol=atol, rtol=atol)
  loss = lambda f: lambda *a: jnp.sum(f(*a).astype(jnp.float32) * w)
  g_ref = jax.grad(loss(ref), argnums=(0, 1, 2, 3))(q, k, v, sink)
  g = jax.grad(loss(fl), argnums=(0, 1, 2, 3))(q, k, v, sink)
  names = ("dq", "dk", "dv", "dsink")
  for name, a, b in zip(names, g, g_ref):
    scale = max(1.0, float(jnp.max(jnp.abs(b.astype(jnp.float32)))))
    np.testing.assert_allclose(
      np.asarray(a, np.float32),
      np.asarray(b, np.float32),
      atol=atol * scale,
      rtol=atol,
      err_msg=f"{name} ({option}, {jnp.dtype(dtype).name})",
    )
  if not OPTIONS[option].get("sinks"):
    assert float(jnp.max(jnp.abs(g[3]))) == 0.0  # no sink in the function: no sink gradient


@pytest.mark.slow
def test_flash_masks_other_documents_and_the_future():
  """Changing a later document or a later token leaves earlier outputs of other documents unchanged."""
  q, k, v, _, sink = _inputs(jnp.float32)
  _, fl = _pair(segments=True, alibi=True, sinks=True)
  base = fl(q, k, v, sink)
  k2, v2 = k.at[0, 15:].add(3.0), v.at[0, 15:].add(3.0)  # documents 1 and 2 of row 0
  moved = fl(q, k2, v2, sink)
  np.testing.assert_array_equal(np.asarray(moved[0, :15]), np.asarray(base[0, :15]))
  assert not np.allclose(np.asarray(moved[0, 15:]), np.asarray(base[0, 15:]))


def test_flash_rejects_mismatched_shapes():
  q = jnp.zeros((1, 16, 2, 16))
  with pytest.raises(ValueError, match="one shape"):
    flash_attention(q, q[:, :8], q[:, :8], interpret=True)


MODEL = dict(vocab_size=61, max_len=48, n_layers=2, d_model=32, n_heads=2, d_ff=64, norm="rmsnorm", mlp="swiglu")


@pytest.mark.parametrize(
  "options",
  [dict(positions="rope+alibi", attn_sinks=True), dict(positions="learned")],
  ids=["rope+alibi+sinks", "gpt2-like"],
)
@pytest.mark.slow
def test_model_flash_path_matches_reference_with_segments(options):
  """attention_impl=flash (interpreted on CPU) through the whole model: logits and parameter gradients."""
  cfg_ref = ModelConfig(**MODEL, **options, attention_impl="reference")
  cfg_flash = cfg_ref.replace(attention_impl="flash")
  assert select_attention_impl(cfg_flash, backend="cpu", has_segments=True, decoding=False)[0] == "flash"
  params = init_params(cfg_ref, 0)
  x = jax.random.randint(jax.random.key(1), (B, 24), 0, 61)
  seg = jnp.asarray(SEG[:, :24])
  pos = jnp.asarray(POS[:, :24])

  def loss(cfg):
    return lambda p: jnp.mean(LanguageModel(cfg).apply({"params": p}, x, positions=pos, segment_ids=seg) ** 2)

  l_ref, g_ref = jax.jit(jax.value_and_grad(loss(cfg_ref)))(params)
  l_fl, g_fl = jax.jit(jax.value_and_grad(loss(cfg_flash)))(params)
  np.testing.assert_allclose(float(l_fl), float(l_ref), rtol=1e-5)
  chex.assert_trees_all_close(g_fl, g_ref, atol=1e-5, rtol=1e-4)


GPU_CFG = ModelConfig(
  vocab_size=64,
  max_len=1024,
  n_layers=2,
  d_model=256,
  n_heads=4,
  d_ff=512,
  positions="rope",
  norm="rmsnorm",
  mlp="swiglu",
  use_bias=False,
  dtype="bfloat16",
)  # head_dim 64


def test_selector_picks_flash_on_gpu_where_cudnn_cannot():
  sel = lambda cfg, **kw: select_attention_impl(
    cfg, **{"backend": "gpu", "has_segments": False, "decoding": False, "seq_len": 1024, **kw}
  )
  assert sel(GPU_CFG) == ("cudnn", "auto: GPU with supported options")  # plain causal bf16 keeps cuDNN
  kernel, reason = sel(GPU_CFG, has_segments=True)
  assert kernel == "flash" and "packed-document" in reason
  assert sel(GPU_CFG.replace(positions="rope+alibi"))[0] == "flash"
  assert sel(GPU_CFG.replace(attn_sinks=True))[0] == "flash"
  assert sel(GPU_CFG.replace(dtype="float32"))[0] == "flash"
  assert sel(GPU_CFG.replace(positions="alibi", attn_sinks=True), has_segments=True)[0] == "flash"
  assert sel(GPU_CFG.replace(attention_impl="flash")) == ("flash", "requested")
  # fallbacks: decoding, and head sizes the Triton tiles do not cover
  assert sel(GPU_CFG, has_segments=True, decoding=True)[0] == "xla"
  assert sel(GPU_CFG.replace(attn_sinks=True), decoding=True)[0] == "reference"
  kernel, reason = sel(GPU_CFG.replace(d_model=32, n_heads=4), has_segments=True)  # head_dim 8
  assert kernel == "xla"
  kernel, reason = sel(GPU_CFG.replace(d_model=32, n_heads=4, attention_impl="flash"))
  assert kernel == "xla" and "head_dim 8" in reason
  assert sel(GPU_CFG.replace(attention_impl="cudnn"), has_segments=True)[0] == "xla"  # cuDNN asked, no fallback to ours
  assert sel(GPU_CFG.replace(attention_impl="xla"), has_segments=True)[0] == "xla"


def test_selector_cpu_and_tpu():
  cpu = lambda cfg, **kw: select_attention_impl(
    cfg, **{"backend": "cpu", "has_segments": True, "decoding": False, **kw}
  )
  assert cpu(GPU_CFG)[0] == "xla"  # auto never interprets a Pallas kernel
  kernel, reason = cpu(GPU_CFG.replace(attention_impl="flash"))
  assert kernel == "flash" and "interpreter" in reason
  assert cpu(GPU_CFG.replace(attn_sinks=True))[0] == "reference"
  tpu = lambda cfg, **kw: select_attention_impl(
    cfg, **{"backend": "tpu", "has_segments": True, "decoding": False, "seq_len": 1024, **kw}
  )
  if tpu_attention.splash_available()[0]:
    assert tpu(GPU_CFG.replace(attn_sinks=True))[0] == "splash"  # sinks are native to splash
  kernel, reason = tpu(GPU_CFG.replace(positions="alibi"))
  assert kernel == "xla" and "ALiBi" in reason
  assert tpu(GPU_CFG.replace(positions="alibi", attn_sinks=True))[0] == "reference"


@pytest.mark.slow
def test_splash_with_sinks_matches_reference_in_interpret_mode():
  Ts = 128
  ks = jax.random.split(jax.random.key(5), 3)
  q, k, v = (jax.random.normal(x, (2, Ts, 2, 32)) for x in ks)
  seg = jnp.asarray(np.array([[1] * 50 + [2] * (Ts - 50), [1] * Ts]), jnp.int32)
  sink = jnp.asarray([0.5, -1.0])
  mask = jnp.tril(jnp.ones((Ts, Ts), bool))[None] & (seg[:, :, None] == seg[:, None, :])
  ref, ref_vjp = jax.vjp(lambda q, k, v, s: reference_attention(q, k, v, mask, None, s), q, k, v, sink)
  out, out_vjp = jax.vjp(
    lambda q, k, v, s: tpu_attention.splash_attention(q, k, v, seg, sink_H=s, interpret=True), q, k, v, sink
  )
  chex.assert_trees_all_close(out, ref, atol=1e-5)
  cot = jnp.cos(ref)
  chex.assert_trees_all_close(out_vjp(cot), ref_vjp(cot), atol=1e-4)

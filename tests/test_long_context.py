"""Long-context curve: chunked cache passes equal the full forward where they should, labelled modes."""

import jax
import numpy as np
import pytest

from modernlm_jax.eval import long_context
from modernlm_jax.model import LanguageModel, ModelConfig, init_params

SMALL = dict(vocab_size=64, max_len=32, n_layers=2, d_model=32, n_heads=2, d_ff=64)


def _cfg(**kw):
  return ModelConfig(**{**SMALL, **kw})


def _full_nll(params, cfg, toks):
  logits = LanguageModel(cfg).apply({"params": params}, np.asarray(toks[:-1])[None])[0]
  lp = jax.nn.log_softmax(logits, axis=-1)
  return -np.asarray(lp)[np.arange(len(toks) - 1), toks[1:]]


TOKS = np.random.default_rng(0).integers(0, 64, 30)


@pytest.mark.slow
@pytest.mark.parametrize(
  "cfg,mode",
  [
    (_cfg(positions="none", norm="rmsnorm", mlp="swiglu", use_bias=False, layer_pattern=("ssm", "rwkv")), "native"),
    (_cfg(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False), "extrapolate"),
    (_cfg(positions="alibi", norm="rmsnorm", mlp="swiglu", use_bias=False), "extrapolate"),
    (_cfg(), "window"),  # learned positions, window longer than the text: never rolls
  ],
)
def test_chunked_pass_equals_full_forward(cfg, mode):
  params = init_params(cfg, 0)
  got = long_context.token_nll(params, cfg, TOKS, mode=mode, window=32, chunk=8)
  np.testing.assert_allclose(got, _full_nll(params, cfg, TOKS), rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_window_and_sinks_differ_once_the_window_rolls():
  cfg = _cfg(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False)
  params = init_params(cfg, 1)
  toks = np.random.default_rng(1).integers(0, 64, 80)
  w = long_context.token_nll(params, cfg, toks, mode="window", window=16, chunk=4)
  s = long_context.token_nll(params, cfg, toks, mode="sinks", window=16, sinks=4, chunk=4)
  full = long_context.token_nll(params, cfg, toks, mode="extrapolate", chunk=8)
  np.testing.assert_allclose(w[:12], full[:12], rtol=2e-4, atol=2e-4)  # inside the window all agree
  assert np.abs(w[40:] - s[40:]).max() > 1e-3 and np.abs(w[40:] - full[40:]).max() > 1e-3


@pytest.mark.slow
def test_curve_labels_every_mode_and_buckets_positions():
  gpt2 = _cfg()
  modern = _cfg(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False)
  rec = _cfg(positions="none", norm="rmsnorm", mlp="swiglu", use_bias=False, layer_pattern=("ssm", "rwkv"))
  docs = [np.random.default_rng(i).integers(0, 64, 70).tolist() for i in range(2)]
  out = {}
  for name, cfg in (("gpt2", gpt2), ("modern", modern), ("hybrid", rec)):
    out[name] = long_context.curve(
      init_params(cfg, 0),
      cfg,
      docs,
      contexts=(16, 32, 64),
      window=16,
      chunk=8,
      extrapolate_max=32,
      bytes_of=lambda ids: 2 * len(ids),
    )
  assert list(out["hybrid"]["modes"]) == ["native"]
  assert list(out["gpt2"]["modes"]) == ["window", "sinks"] and "extrapolate" in out["gpt2"]["skipped"]
  assert list(out["modern"]["modes"]) == ["extrapolate", "window", "sinks"]
  native = out["hybrid"]["modes"]["native"]
  assert all(v is not None for v in native["bpb"]) and len(native["bpb"]) == 3
  ext = out["modern"]["modes"]["extrapolate"]
  assert ext["bpb"][2] is None and ext["bpb"][0] is not None  # 64 > extrapolate_max: not run, and said so
  assert any(k.startswith("extrapolate above") for k in out["modern"]["skipped"])
  assert "4 attention sinks" in out["modern"]["modes"]["sinks"]["label"]
  b = native["buckets"]
  assert [(x["start"], x["end"]) for x in b] == [(0, 8), (8, 16), (16, 32), (32, 64)]
  assert b[3]["tokens"] == 2 * 32
  np.testing.assert_allclose(native["bpb"][2], native["loss"][2] / np.log(2) / 2)


def test_bad_inputs_fail_before_work():
  cfg = _cfg()
  with pytest.raises(ValueError, match="learned positions"):
    long_context.token_nll(init_params(cfg, 0), cfg, TOKS, mode="extrapolate")
  with pytest.raises(ValueError, match=">= 65 tokens"):
    long_context.curve(init_params(cfg, 0), cfg, [list(range(10))], contexts=(16, 64))
  with pytest.raises(ValueError, match="unknown long-context mode"):
    long_context.token_nll(init_params(cfg, 0), cfg, TOKS, mode="bogus")

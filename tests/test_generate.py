"""Generation: cached greedy decoding equals repeated full forward passes; sampling options; EOS; seeds."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import numpy_init

from modernlm_jax import generate as gen
from modernlm_jax.model import LanguageModel, ModelConfig

TINY = dict(vocab_size=64, max_len=32, n_layers=2, d_model=32, n_heads=4, d_ff=64, init_std=0.1)
FAMILIES = {
  "gpt2": dict(family="gpt2"),
  "modern": dict(family="modern", positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False),
}
PROMPTS = [[5, 9, 17, 3, 22, 41, 8], [33, 2, 60]]  # different lengths: the short one is left-padded
NEW = 10
CHUNK = 4  # prefill in several chunks: the 7-token prompt spans two, behind one padding slot


def make(family):
  cfg = ModelConfig(**{**TINY, **FAMILIES[family]})
  return cfg, numpy_init(cfg, std=cfg.init_std)


def reference_greedy(apply, cfg, params, prompt, n):
  """Argmax of a full (cache-free) forward pass over the whole sequence, one token at a time.

  The sequence is right-padded to max_len (one compiled shape); causality makes the padding irrelevant.
  """
  seq, margins = list(prompt), []
  for _ in range(n):
    padded = np.zeros((1, cfg.max_len), np.int32)
    padded[0, : len(seq)] = seq
    logits = np.asarray(apply({"params": params}, jnp.asarray(padded))[0, len(seq) - 1])
    top2 = np.sort(logits)[-2:]
    margins.append(top2[1] - top2[0])
    seq.append(int(np.argmax(logits)))
  return seq[len(prompt) :], min(margins)


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request):
  cfg, params = make(request.param)
  apply = jax.jit(LanguageModel(cfg).apply)
  refs = [reference_greedy(apply, cfg, params, p, NEW) for p in PROMPTS]
  # A near-tie would make the comparison depend on float rounding rather than on the cache logic.
  assert min(m for _, m in refs) > 1e-3
  return cfg, params, [r for r, _ in refs]


@pytest.mark.slow
def test_greedy_with_cache_equals_full_forward_argmax(model):
  cfg, params, refs = model
  out = gen.generate(params, cfg, PROMPTS, max_new_tokens=NEW, prefill_chunk=CHUNK)
  assert out == refs


@pytest.mark.slow
def test_sinks_equal_greedy_within_capacity_and_stream_past_max_len(model):
  cfg, params, refs = model
  # Greedy is deterministic, so the first NEW tokens (all within the 32-slot cache) must match the
  # reference; the rest runs to 3x max_len through the rolling window.
  out = gen.generate(params, cfg, PROMPTS, max_new_tokens=3 * cfg.max_len, stream_sinks=2, prefill_chunk=CHUNK)
  assert [r[:NEW] for r in out] == refs
  assert [len(r) for r in out] == [3 * cfg.max_len] * 2
  assert all(0 <= t < cfg.vocab_size for r in out for t in r)


@pytest.mark.slow
def test_sampling_limits_reduce_to_greedy(model):
  cfg, params, refs = model
  common = dict(max_new_tokens=NEW, seed=3, prefill_chunk=CHUNK)
  assert gen.generate(params, cfg, PROMPTS, temperature=0.0, top_k=5, top_p=0.5, **common) == refs
  assert gen.generate(params, cfg, PROMPTS, temperature=1.0, top_k=1, **common) == refs
  assert gen.generate(params, cfg, PROMPTS, temperature=1.0, top_p=1e-6, **common) == refs


@pytest.mark.slow
def test_stop_token_truncates_each_row(model):
  cfg, params, refs = model
  stop = refs[0][3]
  out = gen.generate(params, cfg, PROMPTS, max_new_tokens=NEW, stop_ids=[stop], prefill_chunk=CHUNK)
  for row, ref in zip(out, refs):
    expected = ref[: ref.index(stop) + 1] if stop in ref else ref
    assert row == expected
  assert len(out[0]) == refs[0].index(stop) + 1 <= 4


def test_seeds_are_reproducible_and_matter(model):
  cfg, params, _ = model
  kw = dict(max_new_tokens=NEW, temperature=1.5, prefill_chunk=CHUNK)
  a = gen.generate(params, cfg, PROMPTS, seed=1, **kw)
  assert gen.generate(params, cfg, PROMPTS, seed=1, **kw) == a
  assert gen.generate(params, cfg, PROMPTS, seed=2, **kw) != a
  assert all(len(r) == NEW for r in a)


def test_linear_cache_refuses_overflow_and_names_sinks():
  cfg, params = make("modern")
  with pytest.raises(ValueError, match="stream_sinks"):
    gen.generate(params, cfg, PROMPTS, max_new_tokens=cfg.max_len)


def test_empty_prompt_is_rejected_with_fix():
  cfg, params = make("gpt2")
  with pytest.raises(ValueError, match="EOS"):
    gen.generate(params, cfg, [[1, 2], []], max_new_tokens=2)


class TestSampleLogits(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_top_k_and_top_p_keep_only_the_head(self):
    logits_BV = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 256))
    rngs = jax.random.split(jax.random.key(0), 3)
    top2 = self.variant(lambda l, r: gen.sample_logits(l, r, 1.0, 2, 1.0))(logits_BV, rngs[0])
    assert set(np.asarray(top2).tolist()) == {0, 1}
    # nucleus 0.7: tokens 0 (0.5) and 1 (0.3) are needed to reach it, token 2 is not
    nucleus = self.variant(lambda l, r: gen.sample_logits(l, r, 1.0, 0, 0.7))(logits_BV, rngs[1])
    assert set(np.asarray(nucleus).tolist()) == {0, 1}
    greedy = self.variant(lambda l, r: gen.sample_logits(l, r, 0.0, 0, 1.0))(logits_BV, rngs[2])
    chex.assert_trees_all_equal(greedy, jnp.zeros(256, jnp.int32))

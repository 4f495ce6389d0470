"""Strided perplexity and batched log-likelihood against brute-force numpy on tiny fake models."""

import math
import os
import re
from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from modernlm_jax.eval import perplexity, scoring

V = 13
MAX_T = 64


def make_tables(seed=0):
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=(V, V)).astype(np.float32),
    0.7 * rng.normal(size=(V, V)).astype(np.float32),
    0.5 * rng.normal(size=(MAX_T, V)).astype(np.float32),
  )


def make_mixing_model(seed=0):
  """Logits = bigram(prev token) + mean embedding of the causal prefix in-segment + position term.

  Depends on every token of the window, so a wrong window shows up in the numbers.
  """
  bigram, emb, pos = (jnp.asarray(t) for t in make_tables(seed))

  def forward(tokens_BT, positions_BT, segment_ids_BT):
    T = tokens_BT.shape[1]
    causal_TS = jnp.tril(jnp.ones((T, T), bool))
    same_BTS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]) & causal_TS
    w_BTS = same_BTS / jnp.maximum(same_BTS.sum(-1, keepdims=True), 1)
    mix_BTV = jnp.einsum("bts,bsv->btv", w_BTS, emb[tokens_BT])
    return bigram[tokens_BT] + mix_BTV + pos[positions_BT]

  return forward


def brute_logprob(tables, prefix, target):
  bigram, emb, pos = tables
  logits = bigram[prefix[-1]] + emb[np.asarray(prefix)].mean(0) + pos[len(prefix) - 1]
  logits = logits.astype(np.float64)
  return logits[target] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def brute_stream_nats(tables, ids, context, stride):
  """Each target t >= 1 scored once; its window is the first whose end reaches t."""
  total = 0.0
  for t in range(1, len(ids)):
    if t <= context:
      start = 0
    else:
      end = context
      while end < t:
        end += stride
      start = end - context
    total -= brute_logprob(tables, list(ids[start:t]), ids[t])
  return total


@pytest.mark.slow
class StreamTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((8, 8, 3), (8, 3, 2), (8, 1, 4), (5, 4, 1))
  def test_matches_brute_force(self, context, stride, batch_size):
    ids = np.random.default_rng(1).integers(0, V, size=41)
    fwd = self.variant(make_mixing_model())
    got = perplexity.evaluate_stream(
      fwd, ids, context=context, stride=stride, batch_size=batch_size, num_bytes=97, num_words=17
    )
    want = brute_stream_nats(make_tables(), ids, context, stride)
    assert got["tokens"] == len(ids) - 1
    np.testing.assert_allclose(got["nats_per_token"] * got["tokens"], want, rtol=1e-5)
    np.testing.assert_allclose(got["perplexity"], math.exp(want / (len(ids) - 1)), rtol=1e-5)
    np.testing.assert_allclose(got["word_perplexity"], math.exp(want / 17), rtol=1e-5)


def test_non_overlapping_chunks_when_stride_equals_context():
  ids = np.random.default_rng(2).integers(0, V, size=30)
  L = 7
  want = sum(-brute_logprob(make_tables(), list(ids[((t - 1) // L) * L : t]), ids[t]) for t in range(1, len(ids)))
  got = perplexity.evaluate_stream(make_mixing_model(), ids, context=L, stride=L, batch_size=2, num_bytes=30)
  np.testing.assert_allclose(got["nats_per_token"] * got["tokens"], want, rtol=1e-5)
  assert got["windows"] == math.ceil(29 / L)


def test_bits_per_byte_identity_on_text():
  class ByteTok:
    vocab_size, eos_id, identity = 257, 256, "bytes-test"

    def encode(self, text):
      return list(text.encode("utf-8"))

  rng = np.random.default_rng(3)
  table = jnp.asarray(rng.normal(size=(257, 257)).astype(np.float32))
  fwd = lambda tok, pos, seg: table[tok]  # noqa: E731
  text = "Héllo wörld, a tiny text.\nSecond line — with ünïcode."
  got = perplexity.evaluate_text(fwd, ByteTok(), text, context=16, stride=8, batch_size=4, count_words=True)
  n_bytes = len(text.encode("utf-8"))
  assert got["bytes"] == n_bytes and got["tokens"] == n_bytes  # eos prepended: all bytes scored
  np.testing.assert_allclose(
    got["bits_per_byte"], got["nats_per_token"] * got["tokens"] / got["bytes"] / math.log(2), rtol=1e-9
  )
  assert got["words"] == len(text.split())
  # A bigram model ignores context, so the windowing must not change the answer.
  ref = perplexity.evaluate_text(fwd, ByteTok(), text, context=64, stride=64, batch_size=1)
  np.testing.assert_allclose(got["nats_per_token"], ref["nats_per_token"], rtol=1e-6)


def test_bad_stream_arguments():
  fwd = make_mixing_model()
  with pytest.raises(ValueError, match="stride"):
    perplexity.evaluate_stream(fwd, np.arange(10) % V, context=4, stride=5, batch_size=1, num_bytes=1)
  with pytest.raises(ValueError, match="at least 2 tokens"):
    perplexity.evaluate_stream(fwd, np.array([1]), context=4, stride=4, batch_size=1, num_bytes=1)
  with pytest.raises(ValueError, match="tokenizer does not match"):
    perplexity.evaluate_stream(fwd, np.array([1, 2, V + 3]), context=4, stride=4, batch_size=1, num_bytes=3)


def test_loglikelihood_matches_brute_force_and_counts_truncation():
  tables = make_tables()
  rng = np.random.default_rng(4)
  requests = [
    (list(rng.integers(0, V, size=n)), list(rng.integers(0, V, size=m)))
    for n, m in [(3, 2), (1, 1), (12, 3), (5, 5), (9, 1)]
  ]
  context = 8
  scored = scoring.score_requests(make_mixing_model(), requests, context=context, batch_size=2)
  for i, (ctx, cont) in enumerate(requests):
    whole = (ctx + cont)[-(context + 1) :]
    n_ctx = len(whole) - len(cont)
    lp = sum(brute_logprob(tables, whole[: n_ctx + j], cont[j]) for j in range(len(cont)))
    greedy = all(
      int(np.argmax(tables[0][whole[n_ctx + j - 1]] + tables[1][whole[: n_ctx + j]].mean(0) + tables[2][n_ctx + j - 1]))
      == cont[j]
      for j in range(len(cont))
    )
    np.testing.assert_allclose(scored.logprob[i], lp, rtol=1e-5)
    assert scored.is_greedy[i] == greedy
    assert scored.truncated[i] == (len(ctx) + len(cont) - 1 > context)
  assert scored.num_truncated == 3
  chex.assert_shape(scored.num_tokens, (5,))
  tuples = scoring.loglikelihood(make_mixing_model(), requests, context=context, batch_size=3)
  np.testing.assert_allclose([t[0] for t in tuples], scored.logprob, rtol=1e-6)


def test_loglikelihood_rejects_bad_requests():
  fwd = make_mixing_model()
  with pytest.raises(ValueError, match="empty context"):
    scoring.loglikelihood(fwd, [([], [1])], context=4, batch_size=1)
  with pytest.raises(ValueError, match="raise context"):
    scoring.loglikelihood(fwd, [([1], [1] * 5)], context=4, batch_size=1)


def test_encode_pair_moves_trailing_space():
  class WordTok:
    def encode(self, text):
      # GPT-2 style: a word carries its leading space; a lone trailing space is a token.
      return [hash(w) % 1000 for w in re.findall(r" ?[^ ]+| ", text)]

  ctx, cont = scoring.encode_pair(WordTok(), "the answer is ", "blue")
  assert len(cont) >= 1 and ctx + cont == WordTok().encode("the answer is blue")


def _shared_data() -> Path:
  return Path(os.environ.get("MODERNLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.shared_data
@pytest.mark.parametrize("spec", ["wikitext2:test", "wikitext103:test", "ptb:test", "tinystories:valid"])
def test_real_corpora_load(spec):
  root = _shared_data()
  if not perplexity.corpus_path(spec, root).is_file():
    pytest.skip(f"{spec} not present under {root}")
  text = perplexity.load_corpus(spec, root)
  assert len(text) > 100_000
  if spec == "wikitext103:test":
    assert text.startswith(" \n = Robert Boulter = \n")

"""Tier-3 (dialogue) probes and the chance-corrected statefulness score."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.eval import statefulness


class WordTokenizer:
  """One id per word or punctuation mark, so every candidate is exactly one token."""

  def __init__(self, texts):
    words = sorted({w for t in texts for w in self._split(t)})
    self.ids = {w: i + 1 for i, w in enumerate(words)}
    self.words = {i: w for w, i in self.ids.items()}
    self.vocab_size, self.eos_id, self.identity = len(words) + 1, 0, "words-test"

  @staticmethod
  def _split(text):
    return re.findall(r"\w+|[^\w\s]", text)

  def encode(self, text):
    return [self.ids[w] for w in self._split(text)]

  def decode(self, ids):
    return " ".join(self.words.get(i, "") for i in ids)


def _tokenizer(probes):
  return WordTokenizer([p.context for p in probes] + [c for p in probes for c in p.choices])


def cache_model(vocab):
  """A unigram cache LM: predicts each word in proportion to how often it already occurred (it copies
  the persona / topic word, which the dialogue repeats, rather than the word named last)."""

  def forward(tokens_BT, positions_BT, segment_ids_BT):
    counts_BTV = jnp.cumsum(jax.nn.one_hot(tokens_BT, vocab) * (segment_ids_BT > 0)[..., None], axis=1)
    return 10.0 * jnp.log(counts_BTV + 1e-3)

  return forward


def uniform_model(vocab):
  return lambda tokens_BT, positions_BT, segment_ids_BT: jnp.zeros((*tokens_BT.shape, vocab), jnp.float32)


def recency_model(vocab):
  """Copies the most recently seen word: follows the user's switch, the failure tier 3 looks for."""

  def forward(tokens_BT, positions_BT, segment_ids_BT):
    T = tokens_BT.shape[1]
    last_BTV = jnp.max(jax.nn.one_hot(tokens_BT, vocab) * (jnp.arange(T) + 1.0)[None, :, None], axis=1, keepdims=True)
    seen = jnp.cumsum(jax.nn.one_hot(tokens_BT, vocab), axis=1) > 0
    return jnp.where(seen, jnp.broadcast_to(last_BTV, seen.shape), 0.0)

  return forward


def _tier3(seed=0, n=12, **kw):
  return [
    p for p in statefulness.make_probes(seed, num_per_tier=n, distances=(2,), **kw) if statefulness.TIER_OF[p.tier] == 3
  ]


def test_tier3_dialogues_are_multi_turn_seeded_and_varied():
  probes = _tier3(0, 30)
  assert probes == _tier3(0, 30) and probes != _tier3(1, 30)
  assert {p.tier for p in probes} == {"persona_consistency", "topic_threading"}
  for p in probes:
    assert p.context.count("\nUser:") + p.context.startswith("User:") >= 6  # 5 on-topic turns + the switch
    assert p.context.rstrip().splitlines()[-1].startswith("Assistant:")
    right = p.choices[p.answer][1:]
    assert len(set(p.choices)) == len(p.choices) == 4
    # The tempting wrong answer (the role/topic named in the switch) is in the dialogue too.
    assert sum(c[1:] in p.context for c in p.choices) >= 2 and right in p.context
  # several surface forms of the opening and of the switch are used
  assert len({p.context.splitlines()[0].split()[1] for p in probes if p.tier == "persona_consistency"}) >= 2
  assert len({p.context.splitlines()[-2].split()[1] for p in probes if p.tier == "topic_threading"}) >= 2
  slots = np.bincount([p.answer for p in probes], minlength=4)
  assert slots.min() > 0
  # Adding tier 3 left tiers 1-2 of a seed unchanged.
  assert len(statefulness.make_probes(0, num_per_tier=3, distances=(2,))) == 3 * 6


@pytest.mark.parametrize("model,expected", [(cache_model, 1.0), (uniform_model, 0.0)])
def test_copier_scores_one_and_uniform_zero_after_chance_correction(model, expected):
  probes = _tier3(0, 10)
  tok = _tokenizer(probes)
  res = statefulness.run_probes(model(tok.vocab_size), tok, probes=probes, context=512, batch_size=8)
  cc = res["chance_corrected"]
  assert res["truncated"] == 0
  np.testing.assert_allclose(cc["tiers"]["3"]["score"], expected, atol=1e-9)
  for fam in ("persona_consistency", "topic_threading"):
    np.testing.assert_allclose(cc["families"][fam]["score"], expected, atol=1e-9)
  if expected == 0.0:  # raw accuracy of a model that cannot choose is chance, not 0
    np.testing.assert_allclose(res["overall_acc"], 0.25)


def test_a_model_that_follows_the_last_mention_fails_tier3():
  probes = _tier3(2, 10)
  tok = _tokenizer(probes)
  res = statefulness.run_probes(recency_model(tok.vocab_size), tok, probes=probes, context=512, batch_size=8)
  assert res["chance_corrected"]["tiers"]["3"]["score"] < -0.2  # it picks the switch's word: below chance


def test_score_weights_every_family_once():
  # interrupted recall has 4x the items (one set per distance) but must count once.
  fams = ["short_term_recall"] * 10 + ["interrupted_recall"] * 40 + ["persona_consistency"] * 10
  correct = [1.0] * 10 + [0.25] * 40 + [0.25] * 10  # perfect on one family, chance elsewhere
  chance = [0.25] * 60
  cc = statefulness.chance_corrected(correct, chance, fams)
  np.testing.assert_allclose(cc["overall"]["score"], 1 / 3)
  assert cc["overall"]["families"] == 3
  np.testing.assert_allclose(cc["tiers"]["1"]["score"], 1.0)
  np.testing.assert_allclose(cc["tiers"]["2"]["score"], 0.0)
  # raw item-pooled accuracy would be dominated by the 40 interrupted items
  assert np.mean(correct) < 0.4


def test_standard_error_over_items_and_seeds():
  rng = np.random.default_rng(0)
  fams = ["composition"] * 200 + ["topic_threading"] * 200
  correct = rng.random(400) < 0.75
  seeds = [0, 1] * 200
  cc = statefulness.chance_corrected(correct, [0.5] * 400, fams, seeds)
  item = (correct - 0.5) / 0.5
  se_fam = item[:200].std(ddof=1) / np.sqrt(200)
  np.testing.assert_allclose(cc["families"]["composition"]["se"], se_fam)
  expected = np.sqrt(cc["families"]["composition"]["se"] ** 2 + cc["families"]["topic_threading"]["se"] ** 2) / 2
  np.testing.assert_allclose(cc["overall"]["se"], expected)
  assert set(cc["by_seed"]) == {"0", "1"}
  with pytest.raises(ValueError, match="equally long"):
    statefulness.chance_corrected([1.0], [0.5, 0.5], ["composition"])


def test_ties_earn_fractional_credit():
  assert statefulness.credit([0.0, 0.0, -1.0, 0.0], 1) == pytest.approx(1 / 3)
  assert statefulness.credit([0.0, -1.0], 1) == 0.0 and statefulness.credit([-2.0, -1.0], 1) == 1.0


@pytest.mark.slow
def test_run_probes_pools_probe_seeds():
  tok = WordTokenizer(
    [p.context for s in (0, 1) for p in statefulness.make_probes(s, num_per_tier=2, distances=(2,))]
    + [c for s in (0, 1) for p in statefulness.make_probes(s, num_per_tier=2, distances=(2,)) for c in p.choices]
  )
  res = statefulness.run_probes(
    uniform_model(tok.vocab_size), tok, seeds=[0, 1], num_per_tier=2, distances=(2,), context=512, batch_size=8
  )
  assert res["n"] == 2 * 2 * 6 and set(res["chance_corrected"]["by_seed"]) == {"0", "1"}

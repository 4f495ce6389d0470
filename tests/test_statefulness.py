"""Statefulness probes with a fake "induction" model that copies from earlier in its window."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.eval import scoring, statefulness
from tests.fakes import ByteTokenizer

V = 257
MATCH = 8


def make_induction_model(strength=8.0):
  """Predicts the byte that followed the longest (then latest) earlier match of the current suffix.

  A perfect in-window copier: it recalls any fact still inside the window and nothing else.
  """
  base_VV = jnp.asarray(0.1 * np.random.default_rng(0).normal(size=(V, V)), jnp.float32)

  def forward(tokens_BT, positions_BT, segment_ids_BT):
    B, T = tokens_BT.shape
    eq_BTU = (
      (tokens_BT[:, :, None] == tokens_BT[:, None, :])
      & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
      & (segment_ids_BT[:, None, :] > 0)
    )
    run_BTU, length_BTU = eq_BTU, eq_BTU.astype(jnp.int32)
    for k in range(1, MATCH):
      shifted = jnp.pad(eq_BTU, ((0, 0), (k, 0), (k, 0)))[:, :T, :T]
      run_BTU = run_BTU & shifted
      length_BTU = length_BTU + run_BTU
    earlier_TU = jnp.arange(T)[None, :] < jnp.arange(T)[:, None]
    score_BTU = jnp.where(earlier_TU & (length_BTU > 0), length_BTU * T + jnp.arange(T), -1)
    best_BT = jnp.argmax(score_BTU, axis=-1)
    found_BT = jnp.max(score_BTU, axis=-1) >= 0
    next_BT = jnp.take_along_axis(tokens_BT, jnp.minimum(best_BT + 1, T - 1), axis=1)
    copy_BTV = jax.nn.one_hot(next_BT, V) * (strength * found_BT)[..., None]
    return base_VV[tokens_BT] + copy_BTV

  return forward


def test_probes_are_deterministic_and_balanced():
  a = statefulness.make_probes(3, num_per_tier=40, distances=(5, 50))
  b = statefulness.make_probes(3, num_per_tier=40, distances=(5, 50))
  assert a == b and a != statefulness.make_probes(4, num_per_tier=40, distances=(5, 50))
  assert len(a) == 40 * 7
  assert {p.tier for p in a} == set(statefulness.TIERS)
  for p in a:
    assert 0 <= p.answer < len(p.choices) and len(set(p.choices)) == len(p.choices)
    assert all(c.startswith(" ") for c in p.choices)
  correction = [p for p in a if p.tier == "correction"]
  assert all(p.choices[p.answer][1:] in p.context.split("prefer ")[1] for p in correction)
  # Answers should not sit in one slot, or a position-biased model would look clever.
  slots = np.bincount([p.answer for p in a if p.tier == "short_term_recall"], minlength=4)
  assert slots.min() > 0
  far = [p for p in a if p.distance == 50][0]
  assert far.context.count(".") >= 51
  for p in a:
    if p.tier == "interrupted_recall":
      middle = p.context.split(". ", 1)[1].rsplit(" Where", 1)[0]
      assert not any(c in middle for c in statefulness.CITIES)


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_choices"):
    statefulness.make_probes(0, num_choices=1)
  with pytest.raises(ValueError, match="distances"):
    statefulness.make_probes(0, distances=(10_000,))


@pytest.mark.slow
class ProbeRunTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_copier_recalls_inside_window_and_forgets_outside(self):
    fwd = self.variant(make_induction_model())
    tok = ByteTokenizer()
    probes = [
      p for p in statefulness.make_probes(0, num_per_tier=6, distances=(2, 40)) if statefulness.TIER_OF[p.tier] < 3
    ]
    context = 256
    res = statefulness.run_probes(fwd, tok, probes=probes, context=context, batch_size=8)
    assert res["tiers"]["short_term_recall"]["acc"] == 1.0
    assert res["tiers"]["short_term_recall"]["chance"] == 0.25
    assert res["tiers"]["correction"]["chance"] == 0.5
    assert res["by_distance"][2]["acc"] == 1.0 and res["by_distance"][2]["truncated"] == 0
    far = res["by_distance"][40]
    assert far["truncated"] == far["n"] == 6  # fact cut off by left truncation, and counted
    assert far["acc"] < 1.0
    assert res["truncated"] == 6 and res["n"] == len(probes)

    # Accuracies must equal a direct argmax over per-choice log-likelihoods.
    reqs = [scoring.encode_pair(tok, p.context, c) for p in probes for c in p.choices]
    lls = scoring.loglikelihood(fwd, reqs, context=context, batch_size=8)
    k, correct = 0, []
    for p in probes:
      scores = [lp for lp, _ in lls[k : k + len(p.choices)]]
      k += len(p.choices)
      correct.append(int(np.argmax(scores)) == p.answer)
    np.testing.assert_allclose(res["overall_acc"], np.mean(correct))

"""Decision logic and seed statistics of the matched-comparison protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modernlm_jax.compare import decision as d
from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare import scaling, stats

BASE = {"val_loss": 3.0, "statefulness_score": 0.50, "decode_tok_s": 100.0, "peak_mem_bytes": 1_000_000}


def _cand(loss=1.0, state=1.0, speed=1.0, mem_less=0.0) -> dict:
  """Candidate metrics relative to BASE: loss/state/speed multipliers, memory fraction saved."""
  return {
    "val_loss": BASE["val_loss"] * loss,
    "statefulness_score": BASE["statefulness_score"] * state,
    "decode_tok_s": BASE["decode_tok_s"] * speed,
    "peak_mem_bytes": BASE["peak_mem_bytes"] * (1 - mem_less),
  }


# --------------------------------------------------------------------------- worked examples


def test_example_pass_statefulness_30_speed_40():
  ratios = d.compute_ratios(_cand(state=1.30, speed=1.40), BASE)
  v = d.verdict(ratios)
  assert v["decision"] == d.GO
  assert v["tiers"] == {
    "loss_ratio": d.PROMISING,  # on-par loss is "within 5%"
    "statefulness_ratio": d.PROMISING,
    "speed_ratio": d.GOOD_ENOUGH,  # 40% faster sits between 20% and 50%
    "memory_ratio": d.GOOD_ENOUGH,  # equal
  }
  assert d.should_scale(ratios) == (True, "Has 2 clear advantages")
  assert v["should_scale_agrees"] is True


def test_example_pass_loss_8_better_memory_40_less():
  ratios = d.compute_ratios(_cand(loss=0.92, mem_less=0.40), BASE)
  assert ratios["memory_ratio"] == pytest.approx(1 / 0.6)
  v = d.verdict(ratios)
  assert v["decision"] == d.GO
  assert v["tiers"]["loss_ratio"] == d.EXCELLENT
  assert v["tiers"]["memory_ratio"] == d.PROMISING
  assert d.should_scale(ratios) == (True, "Balanced trade-off")


@pytest.mark.parametrize(
  "ratios",
  [
    {"loss_ratio": 1.15, "statefulness_ratio": 1.10, "speed_ratio": 1.20, "memory_ratio": 1.00},  # lower edges
    {"loss_ratio": 1.10, "statefulness_ratio": 1.15, "speed_ratio": 1.30, "memory_ratio": 1.00},
    {"loss_ratio": 1.06, "statefulness_ratio": 1.24, "speed_ratio": 1.49, "memory_ratio": 1.24},  # upper edges
  ],
)
def test_example_fail_all_good_enough(ratios):
  v = d.verdict(ratios)
  assert set(v["tiers"].values()) == {d.GOOD_ENOUGH}
  assert v["decision"] == d.FIX_FIRST


def test_all_good_enough_is_where_prose_and_code_disagree():
  ratios = {"loss_ratio": 1.10, "statefulness_ratio": 1.15, "speed_ratio": 1.30, "memory_ratio": 1.00}
  v = d.verdict(ratios)
  assert v["decision"] == d.FIX_FIRST
  assert v["should_scale"] == {"scale": True, "reason": "Has 2 clear advantages"}
  assert v["should_scale_agrees"] is False
  assert any("should_scale (the protocol's code) says True" in r for r in v["reasons"])


def test_example_fail_loss_20_worse_even_with_speed():
  ratios = d.compute_ratios(_cand(loss=1.20, speed=2.5, state=1.6), BASE)
  v = d.verdict(ratios)
  assert v["tiers"]["speed_ratio"] == d.EXCELLENT and v["tiers"]["loss_ratio"] == d.BELOW
  assert v["graduation"]["passed"] is True  # the tiers alone would pass; the loss gate blocks
  assert v["decision"] == d.FIX_FIRST  # 1.2 < 1.3: not a red line, so not STOP
  assert d.should_scale(ratios) == (False, "Loss too high")


@pytest.mark.parametrize(
  "cand, base, label, tier",
  [
    (2.8, 2.7, "good enough", d.PROMISING),
    (3.5, 2.7, "architecture problems", d.BELOW),
    (2.5, 2.7, "something special", d.EXCELLENT),
  ],
)
def test_interpretation_guide(cand, base, label, tier):
  out = d.interpret_loss(cand, base)
  assert out["label"] == label
  assert out["tier"] == tier
  v = d.verdict({"loss_ratio": cand / base})
  # 3.5/2.7 = 1.296: architecture problems, but under the 1.3 red line → FIX FIRST, not STOP.
  assert (
    v["decision"]
    == {"good enough": d.FIX_FIRST, "architecture problems": d.FIX_FIRST, "something special": d.GO}[label]
  )


# --------------------------------------------------------------------------- tiers and should_scale


@pytest.mark.parametrize(
  "metric, ratio, tier",
  [
    ("loss_ratio", 0.999, d.EXCELLENT),
    ("loss_ratio", 1.0, d.PROMISING),
    ("loss_ratio", 1.05, d.PROMISING),
    ("loss_ratio", 1.0501, d.GOOD_ENOUGH),
    ("loss_ratio", 1.15, d.GOOD_ENOUGH),
    ("loss_ratio", 1.16, d.BELOW),
    ("statefulness_ratio", 0.33 / 0.3, d.GOOD_ENOUGH),  # 1.0999… by float round-off
    ("statefulness_ratio", 1.25, d.PROMISING),
    ("statefulness_ratio", 1.5, d.EXCELLENT),
    ("statefulness_ratio", 1.05, d.BELOW),
    ("speed_ratio", 1.19, d.BELOW),
    ("speed_ratio", 1.5, d.PROMISING),
    ("speed_ratio", 2.0, d.EXCELLENT),
    ("memory_ratio", 0.99, d.BELOW),
    ("memory_ratio", 1 / 0.8, d.PROMISING),
    ("memory_ratio", 1 / 0.5, d.EXCELLENT),
    ("memory_ratio", None, d.MISSING),
  ],
)
def test_classify(metric, ratio, tier):
  assert d.classify(metric, ratio) == tier


def test_classify_rejects_unknown_metric():
  with pytest.raises(ValueError, match="use one of"):
    d.classify("bleu_ratio", 1.0)


def test_should_scale_follows_the_code_exactly():
  base = {"loss_ratio": 1.0, "statefulness_ratio": 1.0, "speed_ratio": 1.0, "memory_ratio": 1.0}
  assert d.should_scale({**base, "loss_ratio": 1.151}) == (False, "Loss too high")
  assert d.should_scale({**base, "speed_ratio": 1.11, "loss_ratio": 1.049}) == (True, "Balanced trade-off")
  assert d.should_scale({**base, "speed_ratio": 1.11, "loss_ratio": 1.05}) == (False, "No clear advantage")
  assert d.should_scale({**base, "speed_ratio": 1.1}) == (False, "No clear advantage")  # strictly > 1.1
  assert d.should_scale({**base, "speed_ratio": 2, "memory_ratio": 2, "statefulness_ratio": 2}) == (
    True,
    "Has 3 clear advantages",
  )
  with pytest.raises(ValueError, match="should_scale needs numeric"):
    d.should_scale({"loss_ratio": 1.0})


def test_graduation_rule():
  assert d.graduation({"loss_ratio": d.EXCELLENT})["passed"]
  assert d.graduation({"speed_ratio": d.PROMISING, "memory_ratio": d.PROMISING})["passed"]
  assert not d.graduation({"speed_ratio": d.PROMISING, "memory_ratio": d.GOOD_ENOUGH})["passed"]


def test_zero_baseline_statefulness():
  r = d.compute_ratios({"statefulness_score": 0.2}, {"statefulness_score": 0.0})
  assert r["statefulness_ratio"] == math.inf and d.classify("statefulness_ratio", math.inf) == d.EXCELLENT
  assert d.compute_ratios({"statefulness_score": 0.0}, {"statefulness_score": 0.0})["statefulness_ratio"] == 1.0
  with pytest.raises(ValueError, match="unknown keys"):
    d.compute_ratios({"loss": 1.0}, {})


# --------------------------------------------------------------------------- red lines


def test_red_line_loss_stops():
  v = d.verdict({"loss_ratio": 1.31, "statefulness_ratio": 2.0, "speed_ratio": 3.0, "memory_ratio": 3.0})
  assert v["decision"] == d.STOP
  assert [r["name"] for r in v["red_lines"] if r["triggered"]] == ["loss_ratio"]


def test_red_line_statefulness_below_baseline_stops():
  ratios = d.compute_ratios(_cand(loss=0.9, state=0.95, speed=3.0), BASE)
  v = d.verdict(ratios)
  assert v["decision"] == d.STOP
  assert any(r.startswith("red line statefulness") for r in v["reasons"])


def test_red_line_loss_spike_stops():
  smooth = list(np.linspace(6.0, 3.0, 30))
  spiky = smooth[:20] + [12.0, 11.0] + smooth[22:]
  assert d.loss_spikes(smooth) == []
  spikes = d.loss_spikes(spiky)
  assert [s["index"] for s in spikes] == [20, 21]
  assert spikes[0]["running_avg"] == pytest.approx(np.mean(smooth[10:20]))
  assert [s["index"] for s in d.loss_spikes([5.0, 4.0, None, 3.0, float("nan")])] == [4]
  ratios = {"loss_ratio": 0.9, "statefulness_ratio": 1.3, "speed_ratio": 1.6, "memory_ratio": 1.0}
  assert d.verdict(ratios, candidate_curves={"ok": smooth})["decision"] == d.GO
  assert d.verdict(ratios, candidate_curves={"ok": smooth, "bad": spiky})["decision"] == d.STOP


def test_scaling_checks_against_reference_law():
  ref = scaling.fit_power_law([3.5e6, 8e6], [4.6, 4.2])  # the baseline gains 8.7 %
  good = d.scaling_checks([("3.5M", 3.5e6, 4.5), ("8M", 8e6, 4.1)], ref)
  assert not good[0]["violated"] and good[0]["expected_improvement"] == pytest.approx(1 - 4.2 / 4.6)
  weak = d.scaling_checks([("3.5M", 3.5e6, 4.5), ("8M", 8e6, 4.4)], ref)  # 2.2 % < half of 8.7 %
  assert weak[0]["violated"]
  flat = d.scaling_checks([("8M", 8e6, 4.5), ("3.5M", 3.5e6, 4.5)], None)  # unsorted input is sorted by N
  assert flat[0]["smaller"] == "3.5M" and flat[0]["violated"]
  ratios = {"loss_ratio": 0.9, "statefulness_ratio": 1.3, "speed_ratio": 1.6, "memory_ratio": 1.0}
  v = d.verdict(ratios, scaling=weak)
  assert v["decision"] == d.STOP and "scaling_violation" in v["reasons"][0]


def test_missing_inputs_are_reported_not_guessed():
  v = d.verdict({"loss_ratio": 0.95})
  assert v["decision"] == d.GO  # loss better than baseline is Excellent on its own
  assert v["should_scale_substituted"] == ["statefulness_ratio", "speed_ratio", "memory_ratio"]
  assert any("not measured" in r for r in v["reasons"])
  assert {r["name"] for r in v["red_lines"] if r["triggered"] is None} == {
    "statefulness",
    "training_instability",
    "scaling_violation",
  }
  none = d.verdict({})
  assert none["decision"] == d.FIX_FIRST and none["should_scale"] is None


def test_verdict_from_results_drops_memory_of_different_kinds():
  res = results_lib.new_results(
    {
      "data_source": "x",
      "token_budget": 1,
      "schedule": "cosine",
      "batch_size": 1,
      "seq_len": 8,
      "seeds": [0],
      "tokenizer": "t",
    }
  )
  for fam, loss, kind in (("gpt2", 3.0, "device_peak_bytes_in_use"), ("modern", 2.9, "process_peak_rss")):
    results_lib.add_run(
      res,
      results_lib.make_run(
        fam,
        "8M",
        0,
        8_000_000,
        curves={"tokens": [0, 1], "train_loss": [9.0, loss], "val_loss": [9.0, loss]},
        final={"val_loss": loss, "ppl": math.exp(loss)},
        inference={"decode_tok_s": 10.0, "peak_mem_bytes": 100, "mem_kind": kind},
      ),
    )
  v = d.verdict_from_results(res, "modern")
  assert v["scale"] == "8M" and v["ratios"]["memory_ratio"] is None
  assert any("different kinds" in r for r in v["reasons"])
  assert v["ratios"]["loss_ratio"] == pytest.approx(2.9 / 3.0)


def test_diagnose_framework():
  assert d.diagnose_framework(2.72, 2.7).startswith("framework is correct")
  assert d.diagnose_framework(3.1, 2.7).startswith("training loop has bugs")
  assert d.diagnose_framework(2.5, 2.7).startswith("better than reference")


def test_smoke_checks_fail_and_not_run():
  smoke = {
    "overfit": {"size": 1000, "by_family": {"gpt2": {"final_loss": 0.02}, "modern": {"final_loss": 0.9}}},
    "grad_norm": {"by_family": {"gpt2": 1.0, "modern": 5.0}},
  }
  checks = {c["name"]: c for c in d.smoke_checks(smoke)}
  assert checks["overfit"]["passed"] is False
  assert checks["grad_norm"]["passed"] is False
  assert checks["data_fraction"]["passed"] is None
  assert all(c["passed"] is None for c in d.smoke_checks(None))


# --------------------------------------------------------------------------- stats


def test_summarize_uses_sample_std():
  s = stats.summarize([1.0, 2.0, 3.0, 4.0])
  assert s.mean == 2.5 and s.n == 4
  assert s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
  one = stats.summarize([7.0])
  assert (one.mean, one.std, one.n) == (7.0, 0.0, 1)
  with pytest.raises(ValueError, match="no values"):
    stats.summarize([])
  with pytest.raises(ValueError, match="failed"):
    stats.summarize([1.0, float("nan")])


def test_significance_rule():
  a = stats.Summary(mean=3.0, std=0.01, n=3)
  b = stats.Summary(mean=3.05, std=0.01, n=3)
  assert stats.is_significant(a, b) is True  # 0.05 > 2·sqrt(2)·0.01 = 0.028
  c = stats.Summary(mean=3.02, std=0.01, n=3)
  assert stats.is_significant(a, c) is False  # 0.02 < 0.028
  assert stats.is_significant(a, stats.Summary(4.0, 0.0, 1)) is None


def test_practical_improvement_thresholds():
  assert stats.is_practically_meaningful("loss", 2.6, 3.0)  # 13 % lower
  assert not stats.is_practically_meaningful("loss", 2.8, 3.0)  # 6.7 %
  assert stats.is_practically_meaningful("accuracy", 0.56, 0.50)
  assert not stats.is_practically_meaningful("accuracy", 0.54, 0.50)
  assert stats.is_practically_meaningful("speed", 125.0, 100.0)
  assert stats.is_practically_meaningful("memory", 65.0, 100.0)
  assert stats.relative_delta(1.1, 1.0) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="unknown metric kind"):
    stats.practical_improvement("bleu", 1, 1)

"""Decision logic of the matched-comparison protocol: ratios, tiers, red lines, verdict.

Everything here is a pure function on plain dicts and numbers, so the same logic drives the report,
notebooks and tests. Ratios are oriented so that **> 1 favours the candidate**, except the loss
ratio, which keeps the protocol's orientation (candidate / baseline, lower is better):

    loss_ratio         = candidate val loss        / baseline val loss
    statefulness_ratio = candidate statefulness    / baseline statefulness
    speed_ratio        = candidate decode tokens/s / baseline decode tokens/s
    memory_ratio       = baseline peak memory      / candidate peak memory

Practical thresholds (candidate vs parameter-matched baseline; boundaries are inclusive):

    metric         good enough        promising          excellent
    val loss       ratio ≤ 1.15       ratio ≤ 1.05       ratio < 1.00 ("better")
    statefulness   ratio ≥ 1.10       ratio ≥ 1.25       ratio ≥ 1.50
    speed          ratio ≥ 1.20       ratio ≥ 1.50       ratio ≥ 2.00
    memory         ratio ≥ 1.00       ratio ≥ 1.25       ratio ≥ 2.00
                   ("equal")          ("20 % less")      ("50 % less")

"N % less memory" means candidate = (1 − N/100)·baseline, hence memory_ratio = 1 / (1 − N/100).
"N % faster" means N % more tokens per second.

Graduation rule: at least one Excellent, or at least two Promising.

Verdict (`verdict`):
  STOP       any red line fires: loss_ratio > 1.3; candidate statefulness < baseline; a training
             loss spike > 2× its running average; a scaling violation (see `scaling_checks`).
  FIX FIRST  no red line, but the loss is outside the viability gate (more than 15 % worse), or the
             graduation rule is not met, or the loss comparison is missing.
  GO         no red line, loss within the gate, graduation rule met.

Where the protocol's prose and its code disagree
------------------------------------------------
The protocol states the graduation rule in prose (tiers) and a separate `should_scale` function in
code. `should_scale` here is the code, verbatim. The two disagree on some inputs:

* "All metrics Good Enough → FIX FIRST" (prose). With e.g. loss 1.10, statefulness 1.15,
  speed 1.30, memory 1.00 the tier rule says FIX FIRST (no Promising), but `should_scale` counts
  two ratios > 1.1 and returns (True, "Has 2 clear advantages").
* "Statefulness 30 % better + speed 40 % faster → GO" (prose). By the tier table 40 % faster is only
  Good Enough, so the tier rule passes only because an on-par loss (ratio 1.0, "within 5 %") is the
  second Promising metric; with a loss 6–15 % worse the tier rule says FIX FIRST while
  `should_scale` still says GO.
* The loss gate is 15 % in the thresholds table and in `should_scale`, 20 % in the interpretation
  guide ("within 20 % at 8M → proceed"), and 30 % as a red line. The verdict uses 15 % as the gate
  and 30 % as the STOP line; `interpret_loss` reproduces the guide's 20 % wording.

The verdict follows the prose graduation rule (it reproduces all four worked examples) and always
reports `should_scale`'s answer next to it, flagging disagreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare import scaling as scaling_lib
from modernlm_jax.compare import stats as stats_lib

GO, FIX_FIRST, STOP = "GO", "FIX FIRST", "STOP"

BELOW, GOOD_ENOUGH, PROMISING, EXCELLENT, MISSING = "below", "good_enough", "promising", "excellent", "missing"
RATIO_KEYS = ("loss_ratio", "statefulness_ratio", "speed_ratio", "memory_ratio")

LOSS_GATE = 1.15  # viability: "not >15 % worse on loss"
LOSS_RED_LINE = 1.3
SPIKE_FACTOR = 2.0
SPIKE_WINDOW = 10  # trailing points that form the running average
SPIKE_MIN_HISTORY = 3  # a spike needs an average to be measured against
SCALING_MARGIN_FRACTION = 0.5
_EPS = 1e-9  # keeps table boundaries inclusive despite float round-off (0.33/0.3 = 1.0999…)


@dataclass(frozen=True)
class TierThresholds:
  higher_is_better: bool
  good_enough: float
  promising: float
  excellent: float
  excellent_strict: bool  # "better" for loss means strictly below the baseline
  wording: tuple[str, str, str]


PRACTICAL_THRESHOLDS: dict[str, TierThresholds] = {
  "loss_ratio": TierThresholds(False, 1.15, 1.05, 1.0, True, ("within 15%", "within 5%", "better")),
  "statefulness_ratio": TierThresholds(True, 1.10, 1.25, 1.50, False, ("10% better", "25% better", "50% better")),
  "speed_ratio": TierThresholds(True, 1.20, 1.50, 2.00, False, ("20% faster", "50% faster", "2x faster")),
  "memory_ratio": TierThresholds(True, 1.00, 1.25, 2.00, False, ("equal", "20% less", "50% less")),
}


# --------------------------------------------------------------------------- ratios and tiers


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
  if numerator is None or denominator is None:
    return None
  if denominator == 0:
    # A baseline that scores 0 (e.g. no recall beyond its context) makes any positive
    # candidate score infinitely better; equal zeros are no difference at all.
    return 1.0 if numerator == 0 else math.inf
  return float(numerator) / float(denominator)


def compute_ratios(candidate: Mapping[str, float | None], baseline: Mapping[str, float | None]) -> dict:
  """Ratios from two families' metrics.

  Each mapping may hold `val_loss`, `statefulness_score`, `decode_tok_s`, `peak_mem_bytes`
  (seed means); a missing or None metric gives a None ratio.
  """
  for name, m in (("candidate", candidate), ("baseline", baseline)):
    unknown = set(m) - {"val_loss", "statefulness_score", "decode_tok_s", "peak_mem_bytes"}
    if unknown:
      raise ValueError(
        f"{name} metrics have unknown keys {sorted(unknown)}; "
        "use val_loss, statefulness_score, decode_tok_s, peak_mem_bytes"
      )
  return {
    "loss_ratio": _ratio(candidate.get("val_loss"), baseline.get("val_loss")),
    "statefulness_ratio": _ratio(candidate.get("statefulness_score"), baseline.get("statefulness_score")),
    "speed_ratio": _ratio(candidate.get("decode_tok_s"), baseline.get("decode_tok_s")),
    "memory_ratio": _ratio(baseline.get("peak_mem_bytes"), candidate.get("peak_mem_bytes")),
  }


def classify(metric: str, ratio: float | None) -> str:
  """Tier of one ratio in the practical-thresholds table."""
  if metric not in PRACTICAL_THRESHOLDS:
    raise ValueError(f"unknown metric {metric!r}; use one of {list(PRACTICAL_THRESHOLDS)}")
  if ratio is None:
    return MISSING
  t = PRACTICAL_THRESHOLDS[metric]
  if t.higher_is_better:
    for tier, bound in ((EXCELLENT, t.excellent), (PROMISING, t.promising), (GOOD_ENOUGH, t.good_enough)):
      if ratio >= bound * (1 - _EPS):
        return tier
    return BELOW
  if (ratio < t.excellent) if t.excellent_strict else (ratio <= t.excellent * (1 + _EPS)):
    return EXCELLENT
  if ratio <= t.promising * (1 + _EPS):
    return PROMISING
  if ratio <= t.good_enough * (1 + _EPS):
    return GOOD_ENOUGH
  return BELOW


def classify_all(ratios: Mapping[str, float | None]) -> dict[str, str]:
  return {k: classify(k, ratios.get(k)) for k in RATIO_KEYS}


def graduation(tiers: Mapping[str, str]) -> dict:
  """The graduation rule: ≥ 1 Excellent or ≥ 2 Promising (Excellent is not double-counted)."""
  excellent = [k for k in RATIO_KEYS if tiers.get(k) == EXCELLENT]
  promising = [k for k in RATIO_KEYS if tiers.get(k) == PROMISING]
  passed = len(excellent) >= 1 or len(promising) >= 2
  reason = f"{len(excellent)} excellent ({', '.join(excellent) or '-'}), {len(promising)} promising ({', '.join(promising) or '-'})"
  return {"passed": passed, "excellent": excellent, "promising": promising, "reason": reason}


def should_scale(metrics: Mapping[str, float]) -> tuple[bool, str]:
  """The protocol's decision function, exactly as its code defines it.

  Needs `loss_ratio`, `statefulness_ratio`, `speed_ratio`, `memory_ratio` as numbers. Note this
  is more permissive than the prose graduation rule (see the module docstring): any ratio > 1.1
  counts as a clear advantage.
  """
  missing = [k for k in RATIO_KEYS if metrics.get(k) is None]
  if missing:
    raise ValueError(f"should_scale needs numeric {missing}; measure them or use verdict(), which handles gaps")
  # Rule 1: Not significantly worse on loss
  if metrics["loss_ratio"] > 1.15:
    return False, "Loss too high"
  # Rule 2: Show advantage somewhere
  advantages = sum(v > 1.1 for v in [metrics["statefulness_ratio"], metrics["speed_ratio"], metrics["memory_ratio"]])
  if advantages >= 2:
    return True, f"Has {advantages} clear advantages"
  elif advantages == 1 and metrics["loss_ratio"] < 1.05:
    return True, "Balanced trade-off"
  else:
    return False, "No clear advantage"


def interpret_loss(candidate_loss: float, baseline_loss: float) -> dict:
  """The protocol's interpretation guide for one loss pair (e.g. 2.8 vs 2.7 → good enough).

  Better than baseline → "something special"; within 20 % → "good enough" (proceed);
  more than 20 % worse → "architecture problems" (stop and debug).
  """
  ratio = candidate_loss / baseline_loss
  if ratio < 1.0:
    label, action = "something special", "proceed"
  elif ratio <= 1.20 * (1 + _EPS):
    label, action = "good enough", "proceed"
  else:
    label, action = "architecture problems", "stop and debug"
  return {"ratio": ratio, "label": label, "action": action, "tier": classify("loss_ratio", ratio)}


def diagnose_framework(own_loss: float, reference_loss: float) -> str:
  """Reverse test: the baseline trained in this framework vs a reference implementation's loss."""
  rel = (own_loss - reference_loss) / reference_loss
  if rel < -0.05:
    return "better than reference: document the improvements"
  if rel <= 0.05:
    return "framework is correct (within ±5%)"
  if rel > 0.10:
    return "training loop has bugs (more than 10% worse)"
  return "inconclusive (5-10% worse): rerun with more seeds"


# --------------------------------------------------------------------------- red lines


def loss_spikes(
  curve: Sequence[float | None],
  factor: float = SPIKE_FACTOR,
  window: int = SPIKE_WINDOW,
  min_history: int = SPIKE_MIN_HISTORY,
) -> list[dict]:
  """Points whose loss exceeds `factor` × the mean of the preceding `window` logged points.

  None entries (not logged) are skipped; a NaN/inf entry is always a spike, because a diverged
  run is the instability this red line exists to catch.
  """
  if window < 1 or min_history < 1:
    raise ValueError("window and min_history must be ≥ 1")
  spikes = []
  history: list[float] = []
  for i, v in enumerate(curve):
    if v is None:
      continue
    v = float(v)
    if not math.isfinite(v):
      spikes.append({"index": i, "loss": v, "running_avg": float(np.mean(history)) if history else None})
      continue
    if len(history) >= min_history:
      avg = float(np.mean(history[-window:]))
      if v > factor * avg:
        spikes.append({"index": i, "loss": v, "running_avg": avg})
        # Kept out of the average, so a spike cannot mask the one right after it.
        continue
    history.append(v)
  return spikes


def scaling_checks(
  points: Sequence[tuple[str, float, float]],
  reference_fit: dict | None,
  margin_fraction: float = SCALING_MARGIN_FRACTION,
) -> list[dict]:
  """Checks that each larger scale beats the next smaller one by the expected margin.

  `points` are (scale label, parameter count, mean val loss) of one family. The expected relative
  improvement between N1 < N2 comes from `reference_fit` (the baseline family's fitted law,
  L(N) = a·N^(−b) + c): expected = 1 − L_ref(N2)/L_ref(N1). The rule used here: a violation is an
  observed relative improvement below `margin_fraction` (default ½) of the expected one, i.e. the
  candidate must get at least half the gain the reference architecture gets from the same growth
  in parameters. Without a reference fit the margin is 0: the larger scale must simply be better.
  """
  pts = sorted(points, key=lambda p: p[1])
  checks = []
  for (s1, n1, l1), (s2, n2, l2) in zip(pts, pts[1:]):
    observed = 1.0 - l2 / l1
    if reference_fit is not None:
      p1, p2 = scaling_lib.predict(reference_fit, [n1, n2])
      expected = float(1.0 - p2 / p1)
      required = margin_fraction * max(expected, 0.0)
      rule = f"≥ {margin_fraction:g} × expected {expected:.2%} from the baseline's fitted law"
    else:
      expected, required = None, 0.0
      rule = "larger scale must have lower loss (no baseline law to set a margin)"
    checks.append(
      {
        "smaller": s1,
        "larger": s2,
        "loss_smaller": l1,
        "loss_larger": l2,
        "observed_improvement": observed,
        "expected_improvement": expected,
        "required_improvement": required,
        "rule": rule,
        "violated": not observed > required,
      }
    )
  return checks


def red_lines(
  ratios: Mapping[str, float | None],
  candidate_curves: Mapping[str, Sequence[float | None]] | None = None,
  scaling: Sequence[dict] | None = None,
) -> list[dict]:
  """The four stop conditions; `triggered` is None when the input needed to judge is missing.

  `candidate_curves` maps a run label to its training-loss curve; `scaling` is the output of
  `scaling_checks` for the candidate family.
  """
  out = []
  lr = ratios.get("loss_ratio")
  out.append(
    {
      "name": "loss_ratio",
      "rule": f"candidate loss > {LOSS_RED_LINE} × baseline loss",
      "value": lr,
      "triggered": None if lr is None else lr > LOSS_RED_LINE,
      "detail": "no loss comparison" if lr is None else f"loss ratio {lr:.3f}",
    }
  )
  sr = ratios.get("statefulness_ratio")
  out.append(
    {
      "name": "statefulness",
      "rule": "candidate statefulness score < baseline score",
      "value": sr,
      "triggered": None if sr is None else sr < 1.0,
      "detail": "no statefulness scores for both families" if sr is None else f"statefulness ratio {sr:.3f}",
    }
  )
  if candidate_curves:
    found = {label: loss_spikes(c) for label, c in candidate_curves.items()}
    hits = {k: v for k, v in found.items() if v}
    detail = (
      "; ".join(
        f"{k}: {len(v)} spike(s), first at point {v[0]['index']} (loss {v[0]['loss']:.3g})" for k, v in hits.items()
      )
      if hits
      else f"no spike in {len(found)} curve(s)"
    )
    out.append(
      {
        "name": "training_instability",
        "rule": f"a training-loss point > {SPIKE_FACTOR:g} × mean of the previous {SPIKE_WINDOW} points",
        "value": sum(len(v) for v in hits.values()),
        "triggered": bool(hits),
        "detail": detail,
      }
    )
  else:
    out.append(
      {
        "name": "training_instability",
        "rule": f"a training-loss point > {SPIKE_FACTOR:g} × mean of the previous {SPIKE_WINDOW} points",
        "value": None,
        "triggered": None,
        "detail": "no training-loss curves for the candidate",
      }
    )
  if scaling:
    bad = [c for c in scaling if c["violated"]]
    detail = "; ".join(
      f"{c['smaller']}→{c['larger']}: improved {c['observed_improvement']:.2%}, needed > {c['required_improvement']:.2%}"
      for c in scaling
    )
    out.append(
      {
        "name": "scaling_violation",
        "rule": "larger scale not better than the smaller one by the expected margin",
        "value": len(bad),
        "triggered": bool(bad),
        "detail": detail,
      }
    )
  else:
    out.append(
      {
        "name": "scaling_violation",
        "rule": "larger scale not better than the smaller one by the expected margin",
        "value": None,
        "triggered": None,
        "detail": "fewer than 2 successful scales of the candidate",
      }
    )
  return out


# --------------------------------------------------------------------------- verdict


def verdict(
  ratios: Mapping[str, float | None],
  *,
  candidate_curves: Mapping[str, Sequence[float | None]] | None = None,
  scaling: Sequence[dict] | None = None,
) -> dict:
  """GO / FIX FIRST / STOP with every number that produced it (see the module docstring)."""
  unknown = set(ratios) - set(RATIO_KEYS)
  if unknown:
    raise ValueError(f"unknown ratio keys {sorted(unknown)}; use {list(RATIO_KEYS)}")
  ratios = {k: ratios.get(k) for k in RATIO_KEYS}
  tiers = classify_all(ratios)
  grad = graduation(tiers)
  lines = red_lines(ratios, candidate_curves, scaling)
  fired = [r for r in lines if r["triggered"]]

  # should_scale's code cannot take gaps; a missing advantage ratio is treated as "no advantage"
  # (1.0) so it still answers, and the substitution is reported.
  substituted = [k for k in RATIO_KEYS[1:] if ratios[k] is None]
  if ratios["loss_ratio"] is None:
    scale_answer: tuple[bool, str] | None = None
  else:
    scale_answer = should_scale({k: (1.0 if v is None else v) for k, v in ratios.items()})

  reasons: list[str] = []
  if fired:
    decision = STOP
    reasons += [f"red line {r['name']}: {r['detail']}" for r in fired]
  elif ratios["loss_ratio"] is None:
    decision = FIX_FIRST
    reasons.append("no validation-loss comparison: both families need a successful run at this scale")
  elif tiers["loss_ratio"] == BELOW:
    decision = FIX_FIRST
    reasons.append(f"loss ratio {ratios['loss_ratio']:.3f} > {LOSS_GATE} (viability gate: not >15% worse on loss)")
  elif grad["passed"]:
    decision = GO
    reasons.append(f"graduation rule met: {grad['reason']}")
  else:
    decision = FIX_FIRST
    reasons.append(f"graduation rule not met (needs ≥1 excellent or ≥2 promising): {grad['reason']}")
  missing = [k for k in RATIO_KEYS if ratios[k] is None]
  if missing:
    reasons.append(f"not measured: {', '.join(missing)}")
  unjudged = [r["name"] for r in lines if r["triggered"] is None]
  if unjudged:
    reasons.append(f"red lines not evaluated (missing inputs): {', '.join(unjudged)}")

  agrees = None
  if scale_answer is not None:
    agrees = scale_answer[0] == (decision == GO)
    if not agrees:
      reasons.append(
        f"should_scale (the protocol's code) says {scale_answer[0]} ('{scale_answer[1]}'), "
        f"the graduation rule says {decision}"
      )
  return {
    "decision": decision,
    "ratios": ratios,
    "tiers": tiers,
    "graduation": grad,
    "should_scale": None if scale_answer is None else {"scale": scale_answer[0], "reason": scale_answer[1]},
    "should_scale_substituted": substituted,
    "should_scale_agrees": agrees,
    "red_lines": lines,
    "reasons": reasons,
  }


# --------------------------------------------------------------------------- from results.json


LOSS_UNITS = {"val_loss": ("final", "val_loss"), "bpb": ("final", "bpb")}
UNIT_NAMES = {"val_loss": "validation loss (nats/token)", "bpb": "validation bits/byte"}
REPEAT_WARNING_EPOCHS = 4.0  # more passes over the same data than this: losses partly measure memorisation


def loss_unit(results: Mapping, runs: Sequence[Mapping] | None = None) -> str:
  """ "bpb" when the runs' tokenizers differ (per-token losses are then in different units), else "val_loss".

  Runs record their tokenizer identity; older results without it fall back to the protocol's note
  that scales use different tokenizers.
  """
  runs = results_lib.ok_runs(results) if runs is None else runs
  ids = {r.get("tokenizer") for r in runs if r.get("tokenizer")}
  if len(ids) > 1:
    return "bpb"
  if not ids and (results.get("protocol") or {}).get("tokenizer_note"):
    return "bpb"
  return "val_loss"


def scaling_unit(results: Mapping, families: Sequence[str] | None = None) -> str:
  """The loss unit of the scaling fits: over every successful run of the given (default: all) families."""
  runs = [r for r in results_lib.ok_runs(results) if families is None or r["family"] in families]
  return loss_unit(results, runs)


def repeated_data(results: Mapping, limit: float = REPEAT_WARNING_EPOCHS) -> list[dict]:
  """Successful runs whose training passed over its data more than `limit` times."""
  out = []
  for r in results_lib.ok_runs(results):
    epochs = (r.get("data") or {}).get("epochs")
    if epochs is not None and epochs > limit:
      out.append(
        {
          "run": f"{r['family']}-{r['scale']}-s{r['seed']}",
          "epochs": float(epochs),
          "tokens_per_epoch": (r.get("data") or {}).get("tokens_per_epoch"),
        }
      )
  return out


def family_means(results: Mapping, family: str, scale: str, unit: str = "val_loss") -> dict:
  """Seed means of the four decision metrics for one family × scale (None where not measured).

  `val_loss` holds the loss in `unit` (nats/token, or bits/byte when tokenizers differ).
  """
  runs = results_lib.ok_runs(results, family=family, scale=scale)
  out: dict[str, float | None] = {}
  for key, path in (
    ("val_loss", LOSS_UNITS[unit]),
    ("statefulness_score", ("statefulness", "score")),
    ("decode_tok_s", ("inference", "decode_tok_s")),
    ("peak_mem_bytes", ("inference", "peak_mem_bytes")),
  ):
    vals = results_lib.metric_values(runs, path)
    out[key] = stats_lib.summarize(vals).mean if vals else None
  return out


def memory_kinds(results: Mapping, family: str, scale: str) -> set[str]:
  runs = results_lib.ok_runs(results, family=family, scale=scale)
  return {r["inference"]["mem_kind"] for r in runs if (r.get("inference") or {}).get("mem_kind")}


def family_scaling_points(results: Mapping, family: str, unit: str = "val_loss") -> list[tuple[str, float, float]]:
  """(scale, median params, mean loss in `unit`) for every scale with a successful run."""
  pts = []
  for scale in results_lib.scales(results):
    runs = results_lib.ok_runs(results, family=family, scale=scale)
    losses = results_lib.metric_values(runs, LOSS_UNITS[unit])
    if losses:
      params = float(np.median([r["params"] for r in runs]))
      pts.append((scale, params, stats_lib.summarize(losses).mean))
  return pts


def family_fit(results: Mapping, family: str, unit: str = "val_loss") -> dict | None:
  """Scaling-law fit over the per-seed losses (in `unit`) of a family; None with < 2 scales."""
  xs, ys = [], []
  for run in results_lib.ok_runs(results, family=family):
    v = (run.get("final") or {}).get(LOSS_UNITS[unit][1])
    if v is not None:
      xs.append(float(run["params"]))
      ys.append(float(v))
  if len(set(xs)) < 2:
    return None
  return scaling_lib.fit_power_law(xs, ys)


def default_decision_scale(results: Mapping, candidate: str, baseline: str) -> str | None:
  """protocol.decision_scale if set, else the largest scale where both families have a successful run."""
  chosen = (results.get("protocol") or {}).get("decision_scale")
  if chosen:
    return chosen
  common = [
    s
    for s in results_lib.scales(results)
    if results_lib.ok_runs(results, family=candidate, scale=s)
    and results_lib.ok_runs(results, family=baseline, scale=s)
  ]
  return common[-1] if common else None


def verdict_from_results(
  results: Mapping, candidate: str, baseline: str | None = None, scale: str | None = None
) -> dict:
  """Builds the verdict for `candidate` vs the baseline family from a results dict."""
  baseline = baseline or results_lib.baseline_family(results)
  scale = scale or default_decision_scale(results, candidate, baseline)
  if scale is None:
    out = verdict({})
    out["reasons"].insert(0, f"no scale has successful runs of both {candidate} and {baseline}")
  else:
    unit = loss_unit(
      results,
      results_lib.ok_runs(results, family=candidate, scale=scale)
      + results_lib.ok_runs(results, family=baseline, scale=scale),
    )
    cand_m = family_means(results, candidate, scale, unit)
    base_m = family_means(results, baseline, scale, unit)
    kinds = memory_kinds(results, candidate, scale) | memory_kinds(results, baseline, scale)
    mem_note = None
    if len(kinds) > 1:
      # Device peak bytes and process RSS are different quantities; their ratio means nothing.
      cand_m["peak_mem_bytes"] = base_m["peak_mem_bytes"] = None
      mem_note = f"memory ratio dropped: measured as different kinds {sorted(kinds)}"
    ratios = compute_ratios(cand_m, base_m)
    curves = {
      f"{r['family']}/{r['scale']}/seed{r['seed']}": r["curves"]["train_loss"]
      for r in results_lib.ok_runs(results, family=candidate)
      if (r.get("curves") or {}).get("train_loss")
    }
    s_unit = scaling_unit(results, [candidate, baseline])
    points = family_scaling_points(results, candidate, s_unit)
    checks = scaling_checks(points, family_fit(results, baseline, s_unit)) if len(points) >= 2 else None
    out = verdict(ratios, candidate_curves=curves or None, scaling=checks)
    out["candidate_metrics"], out["baseline_metrics"] = cand_m, base_m
    out["loss_unit"], out["scaling_unit"] = unit, s_unit
    out["scaling_checks"] = checks or []
    if mem_note:
      out["reasons"].append(mem_note)
    if cand_m["val_loss"] is not None and base_m["val_loss"] is not None:
      out["loss_interpretation"] = interpret_loss(cand_m["val_loss"], base_m["val_loss"])
  out.update({"candidate": candidate, "baseline": baseline, "scale": scale})
  _apply_smoke_gate(out, results.get("smoke"))
  out["warnings"] = [
    f"{r['run']} repeats its training data {r['epochs']:.1f} times (> {REPEAT_WARNING_EPOCHS:g}; "
    f"{r['tokens_per_epoch'] or '?'} tokens per epoch): its losses partly measure memorisation"
    for r in repeated_data(results)
  ]
  return out


def _apply_smoke_gate(out: dict, smoke: Mapping | None) -> None:
  """A failed smoke check makes the verdict FIX FIRST, unless the comparison ran with the gate off."""
  checks = smoke_checks(smoke) if smoke else []
  failed = [c for c in checks if c["passed"] is False]
  gate = bool((smoke or {}).get("gate", True))
  out["smoke_checks"], out["smoke_gate"] = checks, gate
  out["smoke_failed"] = [c["name"] for c in failed]
  if not failed:
    return
  names = ", ".join(c["name"] for c in failed)
  if gate:
    if out["decision"] != FIX_FIRST:
      out["reasons"].insert(0, f"(without the smoke gate the verdict would be {out['decision']})")
    out["decision"] = FIX_FIRST
    out["reasons"].insert(
      0,
      f"smoke check(s) failed: {names} — the protocol says fix these before trusting a "
      "comparison; " + "; ".join(f"{c['name']}: {c['detail']}" for c in failed),
    )
  else:
    out["reasons"].insert(
      0,
      f"smoke check(s) failed: {names}; the verdict is NOT gated on them because the "
      "comparison ran with compare.smoke.gate=False",
    )


# --------------------------------------------------------------------------- smoke protocol

SMOKE_SLOPE_TOLERANCE = 1.5  # slopes "similar" when within a factor of 1.5 of each other
SMOKE_OVERFIT_MAX_LOSS = 0.1  # nats; "near-zero" loss after overfitting a tiny set
SMOKE_GRAD_NORM_TOLERANCE = 3.0  # "similar magnitudes": within a factor of 3


def _within_factor(values: Mapping[str, float], factor: float) -> tuple[bool, float]:
  v = [abs(float(x)) for x in values.values()]
  lo, hi = min(v), max(v)
  spread = math.inf if lo == 0 else hi / lo
  return spread <= factor, spread


def smoke_checks(smoke: Mapping | None) -> list[dict]:
  """Evaluates the three smoke tests; each check has name, passed (None = not run), detail, values."""
  smoke = smoke or {}
  checks = []

  frac = smoke.get("data_fraction") or {}
  by_fam = frac.get("by_family") or {}
  if len(by_fam) >= 2:
    slopes = {}
    for fam, c in by_fam.items():
      tok = np.asarray(c["tokens"], dtype=np.float64)
      loss = np.asarray(c["train_loss"], dtype=np.float64)
      keep = tok > 0
      slopes[fam] = float(np.polyfit(np.log(tok[keep]), loss[keep], 1)[0])
    ok, spread = _within_factor(slopes, SMOKE_SLOPE_TOLERANCE)
    ok = ok and all(s < 0 for s in slopes.values())
    checks.append(
      {
        "name": "data_fraction",
        "passed": ok,
        "values": slopes,
        "detail": f"loss slope per log(tokens) {', '.join(f'{k} {v:.3f}' for k, v in slopes.items())}; "
        f"spread ×{spread:.2f} (similar if all negative and ≤ ×{SMOKE_SLOPE_TOLERANCE})",
      }
    )
  else:
    checks.append(
      {"name": "data_fraction", "passed": None, "values": {}, "detail": "not run: needs curves for 2 families"}
    )

  over = (smoke.get("overfit") or {}).get("by_family") or {}
  if over:
    finals = {fam: float(v["final_loss"]) for fam, v in over.items()}
    ok = all(v <= SMOKE_OVERFIT_MAX_LOSS for v in finals.values())
    size = (smoke.get("overfit") or {}).get("size")
    unit = (smoke.get("overfit") or {}).get("unit", "examples")
    checks.append(
      {
        "name": "overfit",
        "passed": ok,
        "values": finals,
        "detail": f"final loss on a tiny set ({size} {unit}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in finals.items())
        + f" (near-zero means ≤ {SMOKE_OVERFIT_MAX_LOSS})",
      }
    )
  else:
    checks.append({"name": "overfit", "passed": None, "values": {}, "detail": "not run: no overfit results"})

  gn = (smoke.get("grad_norm") or {}).get("by_family") or {}
  if len(gn) >= 2:
    vals = {k: float(v) for k, v in gn.items()}
    ok, spread = _within_factor(vals, SMOKE_GRAD_NORM_TOLERANCE)
    checks.append(
      {
        "name": "grad_norm",
        "passed": ok,
        "values": vals,
        "detail": "initial gradient norm "
        + ", ".join(f"{k} {v:.3g}" for k, v in vals.items())
        + f"; spread ×{spread:.2f} (similar if ≤ ×{SMOKE_GRAD_NORM_TOLERANCE})",
      }
    )
  else:
    checks.append({"name": "grad_norm", "passed": None, "values": {}, "detail": "not run: needs 2 families"})
  return checks

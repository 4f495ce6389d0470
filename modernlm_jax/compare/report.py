"""report.md and its PNG figures, regenerated from a results dict alone.

`write_report(results, out_dir)` writes ``out_dir/report.md`` and ``out_dir/*.png``. The output is a
pure function of `results` (no timestamps, no environment lookups), so regenerating from a saved
results.json reproduces the same report.md byte for byte. A section without data says what is
missing and why instead of being dropped; failed runs are listed and left out of every aggregate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from modernlm_jax.compare import decision, plots, protocol_report
from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare import stats as stats_lib
from modernlm_jax.compare.scaling import growth_label
from modernlm_jax.eval import inference_protocol as ip

REPORT_NAME = "report.md"
FIGURES = {
  "val_curves": "val_loss_curves.png",
  "scaling_law": "scaling_law.png",
  "context_scaling": "context_scaling.png",
  "statefulness": "statefulness_vs_distance.png",
}
_TIER_NAMES = {
  decision.EXCELLENT: "Excellent",
  decision.PROMISING: "Promising",
  decision.GOOD_ENOUGH: "Good enough",
  decision.BELOW: "below Good enough",
  decision.MISSING: "not measured",
}
_RATIO_INPUT = {
  "loss_ratio": ("val_loss", "validation loss", "{:.4f}"),
  "statefulness_ratio": ("statefulness_score", "statefulness score", "{:.4f}"),
  "speed_ratio": ("decode_tok_s", "decode tokens/s", "{:.1f}"),
  "memory_ratio": ("peak_mem_bytes", "peak memory (MiB)", "{:.1f}"),
}


# --------------------------------------------------------------------------- formatting helpers


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return out


def _num(x: float | None, fmt: str = "{:.4f}") -> str:
  if x is None:
    return "not measured"
  if isinstance(x, float) and math.isinf(x):
    return "∞"
  return fmt.format(x)


def _summary(runs: Sequence[Mapping], path: Sequence[str]) -> stats_lib.Summary | None:
  vals = results_lib.metric_values(runs, path)
  return stats_lib.summarize(vals) if vals else None


def _fmt_summary(s: stats_lib.Summary | None, digits: int = 4, scale: float = 1.0) -> str:
  if s is None:
    return "not measured"
  if s.n == 1:
    return f"{s.mean * scale:.{digits}f} (n=1)"
  return f"{s.mean * scale:.{digits}f} ± {s.std * scale:.{digits}f} (n={s.n})"


def _mark(cand: stats_lib.Summary | None, base: stats_lib.Summary | None, kind: str) -> str:
  if cand is None or base is None:
    return ""
  if cand.n >= 2 and base.n >= 2:
    return stats_lib.significance_mark(cand, base, kind)
  # One seed: significance is undefined, a practically meaningful gain is still worth marking.
  practical = base.mean != 0 and stats_lib.is_practically_meaningful(kind, cand.mean, base.mean)
  return "n/a †" if practical else "n/a"


def _delta(cand: stats_lib.Summary | None, base: stats_lib.Summary | None) -> str:
  if cand is None or base is None or base.mean == 0:
    return "-"
  return f"{stats_lib.relative_delta(cand.mean, base.mean):+.2%}"


def _why_no_runs(results: Mapping, family: str, scale: str) -> str:
  runs = [r for r in results_lib.all_runs(results) if r["family"] == family and r["scale"] == scale]
  if not runs:
    return "never run"
  return "all runs failed"


# --------------------------------------------------------------------------- sections


def _verdict_section(results: Mapping) -> tuple[list[str], list[dict]]:
  base = results_lib.baseline_family(results)
  fams = results_lib.families(results)
  lines = ["## Verdict", ""]
  verdicts = []
  if (results.get("smoke") or {}).get("stopped_before_training"):
    return lines + _smoke_stop_verdict(results), verdicts
  if base not in fams:
    lines.append(
      f"No verdict: the baseline family `{base}` has no runs in results.json "
      "(set protocol.baseline_family if the baseline has another name)."
    )
    return lines + [""], verdicts
  candidates = [f for f in fams if f != base]
  if not candidates:
    lines.append(f"No verdict: results.json holds only the baseline family `{base}`; there is no candidate to compare.")
    return lines + [""], verdicts
  for cand in candidates:
    v = decision.verdict_from_results(results, cand, base)
    verdicts.append(v)
    scale = v["scale"] or "no common scale"
    lines.append(f"**Verdict — {cand} vs {base} at {scale}: {v['decision']}**")
    lines.append("")
    lines += [f"- {r}" for r in v["reasons"]]
    lines += [f"- WARNING: {w}" for w in v.get("warnings") or []]
    lines.append("")
    lines += _verdict_audit(v)
    if v["scale"] is None:
      continue
    rows = []
    for key in decision.RATIO_KEYS:
      src, label, fmt = _RATIO_INPUT[key]
      if key == "loss_ratio":
        label = decision.UNIT_NAMES[v.get("loss_unit", "val_loss")]
      cv, bv = v["candidate_metrics"][src], v["baseline_metrics"][src]
      if src == "peak_mem_bytes":
        cv = None if cv is None else cv / 2**20
        bv = None if bv is None else bv / 2**20
      t = decision.PRACTICAL_THRESHOLDS[key]
      rows.append(
        [
          key,
          label,
          _num(cv, fmt),
          _num(bv, fmt),
          _num(v["ratios"][key], "{:.3f}"),
          _TIER_NAMES[v["tiers"][key]],
          f"{t.good_enough:g} / {t.promising:g} / {t.excellent:g}",
        ]
      )
    lines += _table(["metric", "from", cand, base, "ratio", "tier", "good / promising / excellent at"], rows)
    lines.append("")
    ss = v["should_scale"]
    if ss is None:
      lines.append("`should_scale` (the protocol's code): not evaluated, the loss ratio is missing.")
    else:
      sub = (
        f" (missing {', '.join(v['should_scale_substituted'])} taken as 1.0 = no advantage)"
        if v["should_scale_substituted"]
        else ""
      )
      agree = "agrees with" if v["should_scale_agrees"] else "disagrees with"
      lines.append(
        f"`should_scale` (the protocol's code): {ss['scale']} — \"{ss['reason']}\"{sub}; {agree} the verdict."
      )
    li = v.get("loss_interpretation")
    if li:
      cl, bl = v["candidate_metrics"]["val_loss"], v["baseline_metrics"]["val_loss"]
      lines.append(
        f"Interpretation guide: {decision.UNIT_NAMES[v.get('loss_unit', 'val_loss')]} {cl:.4f} vs {bl:.4f} "
        f"(ratio {li['ratio']:.3f}) → {li['label']} ({li['action']})."
      )
    lines.append("")
    lines += _table(
      ["red line", "rule", "fired", "detail"],
      [
        [r["name"], r["rule"], {True: "YES", False: "no", None: "not evaluated"}[r["triggered"]], r["detail"]]
        for r in v["red_lines"]
      ],
    )
    lines.append("")
  lines.append(
    "Tiers follow the practical-thresholds table; GO needs no red line, loss within 15 % of the baseline, "
    "and ≥ 1 Excellent or ≥ 2 Promising. `should_scale` is the protocol's own decision function, shown "
    "alongside because it is more permissive (any ratio > 1.1 counts as an advantage)."
  )
  return lines + [""], verdicts


def _smoke_stop_verdict(results: Mapping) -> list[str]:
  """The verdict when the smoke gate stopped the comparison before full training."""
  checks = decision.smoke_checks(results.get("smoke"))
  failed = [c for c in checks if c["passed"] is False]
  lines = [
    "**Verdict: FIX FIRST** — the smoke protocol failed before full training, so no member was trained "
    "to the budget and no family comparison was made.",
    "",
  ]
  lines += [f"- smoke check(s) failed: {', '.join(c['name'] for c in failed)}"]
  lines += [f"- {c['name']}: {c['detail']}" for c in failed]
  lines += ["- fix the failing check(s), or rerun with --config.compare.smoke.gate=False to go on anyway", ""]
  v = {
    "smoke_checks": checks,
    "smoke_gate": True,
    "red_lines": [],
    "ratios": {},
    "tiers": {},
    "graduation": {"passed": False, "reason": "not evaluated: no trained members"},
    "decision": decision.FIX_FIRST,
  }
  return lines + _verdict_audit(v)


def _verdict_audit(v: Mapping) -> list[str]:
  """Every number the verdict used, beside the rule it fed, in the order the rules are applied."""
  on = {True: "YES", False: "no", None: "not evaluated"}
  rows = []
  for c in v.get("smoke_checks") or []:
    outcome = {True: "pass", False: "FAIL", None: "not run"}[c["passed"]]
    gate = "gates the verdict" if v.get("smoke_gate", True) else "not gating (compare.smoke.gate=False)"
    rows.append(["1 smoke " + c["name"], c["detail"], f"{outcome}; {gate}"])
  for r in v.get("red_lines") or []:
    rows.append(["2 red line " + r["name"], f"{r['detail']} (rule: {r['rule']})", f"fired: {on[r['triggered']]}"])
  ratios, tiers = v.get("ratios") or {}, v.get("tiers") or {}
  lr = ratios.get("loss_ratio")
  unit = decision.UNIT_NAMES[v.get("loss_unit", "val_loss")]
  rows.append(
    [
      "3 loss gate",
      f"loss ratio {_num(lr, '{:.4f}')} ({unit}, candidate / baseline)",
      "not measured"
      if lr is None
      else (
        f"within ≤ {decision.LOSS_GATE}"
        if tiers.get("loss_ratio") != decision.BELOW
        else f"> {decision.LOSS_GATE}: fails"
      ),
    ]
  )
  tier_txt = ", ".join(
    f"{k} {_num(ratios.get(k), '{:.3f}')} → {_TIER_NAMES[tiers.get(k, decision.MISSING)]}" for k in decision.RATIO_KEYS
  )
  grad = v.get("graduation") or {}
  rows.append(
    [
      "4 graduation (≥ 1 Excellent or ≥ 2 Promising)",
      tier_txt,
      f"{'met' if grad.get('passed') else 'not met'}: {grad.get('reason', '-')}",
    ]
  )
  rows.append(
    [
      "verdict",
      "first of: smoke FAIL (gated) → FIX FIRST; red line → STOP; loss gate fails or graduation "
      "not met → FIX FIRST; else GO",
      v["decision"],
    ]
  )
  return (
    ["Verdict audit (re-derive the verdict from these rows):", ""] + _table(["rule", "input", "outcome"], rows) + [""]
  )


def _data_section(results: Mapping) -> list[str]:
  """Tokens trained, tokens per pass over the data and passes made, per successful run."""
  lines = ["## Training data", ""]
  rows = []
  for r in results_lib.ok_runs(results):
    d = r.get("data") or {}
    epochs = d.get("epochs")
    flag = "" if epochs is None or epochs <= decision.REPEAT_WARNING_EPOCHS else " (repeats its data: > 4 epochs)"
    rows.append(
      [
        r["family"],
        r["scale"],
        r["seed"],
        _int(d.get("tokens_seen")),
        _int(d.get("tokens_per_epoch")),
        (_num(epochs, "{:.2f}") if epochs is not None else "not recorded") + flag,
      ]
    )
  if not rows:
    return lines + ["No successful runs.", ""]
  return lines + _table(["family", "scale", "seed", "tokens trained", "tokens / epoch", "epochs"], rows) + [""]


def _int(x) -> str:
  return "not recorded" if x is None else f"{int(x):,}"


def _corpora_section(results: Mapping) -> list[str]:
  """Bits per byte (tokenizer-independent) and perplexity on the named corpora; skipped corpora with reasons."""
  lines = ["## Language-modelling corpora (bits/byte; perplexity in each run's own tokens)", ""]
  runs = results_lib.ok_runs(results)
  names = list(
    dict.fromkeys(
      [c for r in runs for c in (r.get("perplexity") or {})]
      + [c for r in runs for c in ((r.get("skipped") or {}).get("perplexity") or {})]
    )
  )
  if not names:
    return lines + ["Not run: no successful run has a `perplexity` entry (compare.perplexity was empty).", ""]
  rows = []
  for scale in results_lib.scales(results):
    for fam in results_lib.families(results):
      fruns = results_lib.ok_runs(results, family=fam, scale=scale)
      if not fruns:
        continue
      cells = []
      for c in names:
        bpb = _summary(fruns, ("perplexity", c, "bpb"))
        if bpb is None:
          why = next(
            (
              str(((r.get("skipped") or {}).get("perplexity") or {}).get(c))
              for r in fruns
              if ((r.get("skipped") or {}).get("perplexity") or {}).get(c)
            ),
            "not measured",
          )
          cells.append(f"skipped: {why}")
        else:
          cells.append(f"{_fmt_summary(bpb)} bpb / ppl {_fmt_summary(_summary(fruns, ('perplexity', c, 'ppl')), 2)}")
      rows.append([scale, fam] + cells)
  lines += _table(["scale", "family"] + names, rows)
  return lines + ["", "Bits per byte compare across tokenizers; perplexity only between runs that share one.", ""]


def _tasks_section(results: Mapping) -> list[str]:
  """Downstream task accuracy per scale × family; a task that did not run says why (never dropped)."""
  runs = results_lib.ok_runs(results)
  names = list(
    dict.fromkeys(
      [t for r in runs for t in (r.get("tasks") or {})]
      + [t for r in runs for t in ((r.get("skipped") or {}).get("tasks") or {})]
    )
  )
  if not names:
    return []
  rows = []
  for scale in results_lib.scales(results):
    for fam in results_lib.families(results):
      fruns = results_lib.ok_runs(results, family=fam, scale=scale)
      if not fruns:
        continue
      cells = []
      for t in names:
        acc = _summary(fruns, ("tasks", t))
        why = next(
          (
            str(((r.get("skipped") or {}).get("tasks") or {}).get(t))
            for r in fruns
            if ((r.get("skipped") or {}).get("tasks") or {}).get(t)
          ),
          None,
        )
        cells.append(_fmt_summary(acc, 3) if acc is not None else f"skipped: {why or 'not measured'}")
      rows.append([scale, fam] + cells)
  return ["### Downstream tasks (accuracy)", ""] + _table(["scale", "family"] + names, rows) + [""]


def _protocol_section(results: Mapping) -> list[str]:
  proto = results.get("protocol") or {}
  # JSON text, not repr: a tuple and the list it becomes after a save/load round trip print the same.
  rows = [[k, f"`{proto[k] if isinstance(proto[k], str) else json.dumps(proto[k], sort_keys=True)}`"] for k in proto]
  n_ok, n_failed = len(results_lib.ok_runs(results)), len(results_lib.failed_runs(results))
  lines = ["## Protocol", ""] + _table(["setting", "value"], rows)
  lines += [
    "",
    f"Runs: {n_ok} successful, {n_failed} failed, families {results_lib.families(results)}, "
    f"scales {results_lib.scales(results)}.",
    "",
  ]
  return lines


def _lm_section(results: Mapping) -> list[str]:
  base = results_lib.baseline_family(results)
  lines = ["## Language modeling", ""]
  if not results_lib.ok_runs(results):
    return lines + ["No successful runs: every run failed (see Failed runs), so there is nothing to tabulate.", ""]
  for scale in results_lib.scales(results):
    base_runs = results_lib.ok_runs(results, family=base, scale=scale)
    b_loss = _summary(base_runs, ("final", "val_loss"))
    b_ppl = _summary(base_runs, ("final", "ppl"))
    rows = []
    for fam in results_lib.families(results):
      runs = results_lib.ok_runs(results, family=fam, scale=scale)
      if not runs:
        rows.append([fam, "-", f"no successful run ({_why_no_runs(results, fam, scale)})", "", "", "", ""])
        continue
      loss = _summary(runs, ("final", "val_loss"))
      ppl = _summary(runs, ("final", "ppl"))
      bpb = _summary(runs, ("final", "bpb"))
      params = sorted(r["params"] for r in runs)[len(runs) // 2]
      is_base = fam == base
      rows.append(
        [
          fam,
          f"{params:,}",
          _fmt_summary(loss),
          _fmt_summary(ppl, 2),
          _fmt_summary(bpb),
          "baseline" if is_base else _delta(loss, b_loss),
          "" if is_base else (_mark(loss, b_loss, "loss") + " / " + _mark(ppl, b_ppl, "loss")).strip(" /"),
        ]
      )
    lines += [f"### Scale {scale}", ""]
    lines += _table(
      [
        "family",
        "params",
        "val loss (nats/token)",
        "perplexity",
        "bits/byte",
        "Δ loss vs " + base,
        "marks (loss / ppl)",
      ],
      rows,
    )
    lines.append("")
  lines.append(
    "Mean ± sample std over seeds. Marks: `*` significant by the protocol's rule "
    "|m1 − m2| > 2·sqrt(σ1² + σ2²); `†` more than 10 % relative improvement over the baseline; "
    "`n/a` significance undefined with a single seed."
  )
  lines.append("")
  if decision.loss_unit(results) == "bpb":
    lines += [
      "Runs use different tokenizers, so per-token losses and perplexities compare only within a scale; "
      "across scales (scaling fit, its plot and red line) the unit is bits/byte.",
      "",
    ]
  lines += _tasks_section(results)
  return lines


def _figure(lines: list[str], fig: dict | str, title: str) -> None:
  if isinstance(fig, str):
    lines += [f"Figure not drawn: {fig}.", ""]
    return
  lines += [f"![{title}]({fig['path'].name})", ""]
  lines += [f"Note: {n}." for n in fig["notes"]]
  if fig["notes"]:
    lines.append("")


def _statefulness_section(results: Mapping, fig: dict | str) -> list[str]:
  base = results_lib.baseline_family(results)
  lines = ["## Statefulness", ""]
  runs_with = [r for r in results_lib.ok_runs(results) if r.get("statefulness")]
  if not runs_with:
    return lines + [
      "No statefulness results: no successful run has a `statefulness` entry "
      "(the statefulness probes were not run for any family).",
      "",
    ]
  tiers = sorted({t for r in runs_with for t in (r["statefulness"].get("by_tier") or {})})
  rows = []
  for scale in results_lib.scales(results):
    b = _summary(results_lib.ok_runs(results, family=base, scale=scale), ("statefulness", "score"))
    for fam in results_lib.families(results):
      runs = [r for r in results_lib.ok_runs(results, family=fam, scale=scale) if r.get("statefulness")]
      if not runs:
        ok = results_lib.ok_runs(results, family=fam, scale=scale)
        reason = "probes not run" if ok else _why_no_runs(results, fam, scale)
        rows.append([scale, fam, f"not measured ({reason})", "", ""] + [""] * len(tiers))
        continue
      s = _summary(runs, ("statefulness", "score"))
      ratio = "baseline" if fam == base else (_num(s.mean / b.mean, "{:.3f}") if b and b.mean else "-")
      mark = "" if fam == base else _mark(s, b, "accuracy")
      rows.append(
        [scale, fam, _fmt_summary(s, 3), ratio, mark]
        + [_fmt_summary(_summary(runs, ("statefulness", "by_tier", t)), 3) for t in tiers]
      )
  lines += _table(["scale", "family", "score", f"ratio vs {base}", "marks"] + [f"tier {t}" for t in tiers], rows)
  lines += ["", "Marks: `*` significant (2σ rule); `†` more than 5 points absolute accuracy gain.", ""]
  chance = results_lib.metric_values(runs_with, ("statefulness", "chance"))
  if chance:
    lines += [f"Chance-level score (random choice among the options): {stats_lib.summarize(chance).mean:.3f}.", ""]
  _figure(lines, fig, "statefulness accuracy vs distance")
  return lines


def _inference_section(results: Mapping, fig: dict | str) -> list[str]:
  lines = ["## Inference", ""]
  runs_with = [r for r in results_lib.ok_runs(results) if r.get("inference")]
  if not runs_with:
    return lines + [
      "No inference measurements: no successful run has an `inference` entry (the speed/memory protocol was not run).",
      "",
    ]
  rows = []
  for scale in results_lib.scales(results):
    for fam in results_lib.families(results):
      runs = [r for r in results_lib.ok_runs(results, family=fam, scale=scale) if r.get("inference")]
      if not runs:
        continue
      prefill = _summary(runs, ("inference", "prefill_s"))
      decode = _summary(runs, ("inference", "decode_tok_s"))
      mem = _summary(runs, ("inference", "peak_mem_bytes"))
      kinds = sorted({r["inference"].get("mem_kind") for r in runs if r["inference"].get("mem_kind")})
      exps = results_lib.metric_values(runs, ("inference", "context_scaling", "exponent"))
      exp_s = "not measured"
      if exps:
        e = stats_lib.summarize(exps)
        exp_s = f"{e.mean:.2f} ({growth_label(e.mean)})"
      ppl = _summary(runs, ("final", "ppl"))
      cer = "not measured"
      if ppl is not None and prefill is not None:
        cer = f"{ip.compute_efficiency_ratio(ip.quality_from_ppl(ppl.mean), prefill.mean):.3f}"
      rows.append(
        [
          scale,
          fam,
          _fmt_summary(prefill, 2, 1e3) + " ms" if prefill else "not measured",
          _fmt_summary(decode, 1),
          (_fmt_summary(mem, 1, 1 / 2**20) + " MiB") if mem else "not measured",
          ", ".join(kinds) or "-",
          exp_s,
          cer,
        ]
      )
  lines += _table(
    ["scale", "family", "prefill", "decode tok/s", "peak memory", "memory kind", "context exponent", "CER (1/s)"], rows
  )
  lines += [
    "",
    "Context exponent: slope of log prefill time vs log context length (≈1 linear, ≈2 quadratic). "
    "CER = (1 / perplexity) / median prefill seconds: a higher-is-better quality per second "
    "(the protocol's example divides perplexity itself, which would reward a worse model). "
    "`process_peak_rss` is a whole-process high-water mark (CPU), not comparable with device peaks.",
    "",
  ]
  _figure(lines, fig, "context scaling")
  return lines


def _scaling_section(results: Mapping, fits: Mapping[str, dict | None], fig: dict | str) -> list[str]:
  base = results_lib.baseline_family(results)
  unit = decision.scaling_unit(results)
  lines = [
    "## Scaling law",
    "",
    f"Unit: {decision.UNIT_NAMES[unit]}"
    + (" (the runs' tokenizers differ, so per-token losses are not comparable)." if unit == "bpb" else "."),
    "",
  ]
  rows = []
  missing = []
  for fam in results_lib.families(results):
    fit = fits.get(fam)
    if fit is None:
      n = len(decision.family_scaling_points(results, fam, unit))
      missing.append(f"`{fam}`: {n} successful scale(s), a fit needs at least 2")
      continue
    rows.append(
      [
        fam,
        f"{fit['a']:.4g}",
        f"{fit['b']:.4f}",
        f"{fit['c']:.4f}",
        fit["kind"],
        fit["n_scales"],
        fit["n_points"],
        f"{fit['rms_residual']:.2e}",
        fit["note"],
      ]
    )
  if rows:
    lines += _table(["family", "a", "b", "c", "form", "scales", "points", "rms residual", "note"], rows) + [""]
  lines += [f"No fit for {m}." for m in missing]
  if missing:
    lines.append("")
  check_rows = []
  base_fit = fits.get(base)
  for fam in results_lib.families(results):
    pts = decision.family_scaling_points(results, fam, unit)
    if len(pts) < 2:
      continue
    for c in decision.scaling_checks(pts, base_fit):
      check_rows.append(
        [
          fam,
          f"{c['smaller']} → {c['larger']}",
          f"{c['loss_smaller']:.4f} → {c['loss_larger']:.4f}",
          f"{c['observed_improvement']:.2%}",
          f"{c['required_improvement']:.2%}",
          "VIOLATION" if c["violated"] else "ok",
        ]
      )
  if check_rows:
    lines += [
      f"Expected margin: each larger scale must improve loss by more than half of what the `{base}` "
      "fitted law predicts for the same growth in parameters (the baseline necessarily matches its "
      "own law when fitted through 2 scales).",
      "",
    ]
    lines += _table(
      ["family", "step", f"mean {decision.UNIT_NAMES[unit]}", "observed gain", "required gain", "check"], check_rows
    ) + [""]
  lines.append("A steeper b means more parameter-efficient; the protocol expects the families' curves to run parallel.")
  lines.append("")
  _figure(lines, fig, "scaling law")
  return lines


def _stability_section(results: Mapping) -> list[str]:
  lines = ["## Training stability", ""]
  rows = []
  checked = 0
  for r in results_lib.ok_runs(results):
    curve = (r.get("curves") or {}).get("train_loss")
    if not curve:
      continue
    checked += 1
    for s in decision.loss_spikes(curve):
      tok = r["curves"]["tokens"][s["index"]]
      avg = "-" if s["running_avg"] is None else f"{s['running_avg']:.4f}"
      rows.append([r["family"], r["scale"], r["seed"], f"{tok:,}", f"{s['loss']:.4f}", avg])
  if checked == 0:
    return lines + ["No training-loss curves in successful runs, so loss spikes could not be checked.", ""]
  if rows:
    lines += _table(["family", "scale", "seed", "tokens", "loss", "running avg"], rows)
  else:
    lines.append(
      f"No loss spike (> {decision.SPIKE_FACTOR:g}× the mean of the previous {decision.SPIKE_WINDOW} points) in {checked} training curve(s)."
    )
  return lines + [""]


def _smoke_section(results: Mapping) -> list[str]:
  lines = ["## Smoke protocol", ""]
  smoke = results.get("smoke")
  if not smoke:
    return lines + [
      "Not run: results.json has no `smoke` entry (the 1 %-data, overfit and gradient-norm checks were not recorded).",
      "",
    ]
  if smoke.get("scale"):
    lines += [f"Scale: {smoke['scale']}.", ""]
  rows = [
    [c["name"], {True: "pass", False: "FAIL", None: "not run"}[c["passed"]], c["detail"]]
    for c in decision.smoke_checks(smoke)
  ]
  return lines + _table(["check", "result", "detail"], rows) + [""] + _smoke_gate_lines(smoke)


def _smoke_gate_lines(smoke: Mapping) -> list[str]:
  lines = []
  if smoke.get("gate", True):
    lines.append("Gate: on — the checks ran before full training; a failed check makes the verdict FIX FIRST.")
  else:
    lines.append("Gate: OFF (compare.smoke.gate=False) — the comparison went on whatever the checks said.")
  if smoke.get("stopped_before_training"):
    lines.append("A check failed, so full training was not started.")
  lines += [f"- {fam}: could not complete: {err}" for fam, err in (smoke.get("errors") or {}).items()]
  return lines + [""]


def _failed_section(results: Mapping) -> list[str]:
  lines = ["## Failed runs", ""]
  failed = results_lib.failed_runs(results)
  if not failed:
    return lines + ["None: every run finished.", ""]
  rows = [
    [r["family"], r["scale"], r["seed"], f"{r['params']:,}", str(r["error"]).replace("|", "\\|").replace("\n", " ")]
    for r in failed
  ]
  return (
    lines
    + _table(["family", "scale", "seed", "params", "error"], rows)
    + ["", "Failed runs are excluded from every mean, fit and verdict above.", ""]
  )


# --------------------------------------------------------------------------- entry point


def _draw(fn, *args) -> dict | str:
  try:
    return fn(*args)
  except plots.MissingPlotData as e:
    return str(e)


def write_report(results: Mapping, out_dir: str | Path) -> Path:
  """Writes report.md and the PNG figures into out_dir; returns the report path.

  Raises ValueError listing the schema problems when `results` is invalid.
  """
  problems = results_lib.validate(results)
  if problems:
    raise ValueError("cannot report on invalid results:\n  " + "\n  ".join(problems))
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for name in FIGURES.values():
    # A stale figure from an earlier run must not survive next to a report that says it is missing.
    (out_dir / name).unlink(missing_ok=True)
  unit = decision.scaling_unit(results)
  fits = {fam: decision.family_fit(results, fam, unit) for fam in results_lib.families(results)}
  figs = {
    "val_curves": _draw(plots.plot_val_curves, results, out_dir / FIGURES["val_curves"]),
    "scaling_law": _draw(plots.plot_scaling_law, results, fits, out_dir / FIGURES["scaling_law"], unit),
    "context_scaling": _draw(plots.plot_context_scaling, results, out_dir / FIGURES["context_scaling"]),
    "statefulness": _draw(plots.plot_statefulness, results, out_dir / FIGURES["statefulness"]),
  }
  lines = ["# Matched comparison report", ""]
  verdict_lines, _ = _verdict_section(results)
  lines += verdict_lines
  lines += _protocol_section(results)
  lines += _data_section(results)
  lines += _lm_section(results)
  _figure(lines, figs["val_curves"], "validation loss curves")
  lines += _corpora_section(results)
  lines += _statefulness_section(results, figs["statefulness"])
  lines += _inference_section(results, figs["context_scaling"])
  lines += _scaling_section(results, fits, figs["scaling_law"])
  lines += _stability_section(results)
  lines += _smoke_section(results)
  lines += protocol_report.sections(
    results, out_dir
  )  # budgets, chance-corrected score, long context, dialogue, reverse test
  lines += _failed_section(results)
  path = out_dir / REPORT_NAME
  text = "\n".join(lines).rstrip() + "\n"
  tmp = path.with_suffix(".md.tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)
  return path

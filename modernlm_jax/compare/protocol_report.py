"""Report sections for the rest of the protocol: budgets, chance-corrected statefulness, long context,
conversation, and the reverse test. Drawn from results.json alone, like every other section.

`sections(results, out_dir) -> list[str]` returns the markdown lines and writes `long_context.png`.
Run entries read here (all optional; a missing one is reported as such):

    run["budget"]        {"kind", "steps", "tokens", "train_flops", "baseline_train_flops", "flops_vs_baseline"}
    run["statefulness"]["chance_corrected"]  {"overall": {score, se}, "tiers": {"1": {...}}, "families": {...}}
    run["long_context"]  {"contexts", "modes": {mode: {"label", "bpb", "loss"}}, "skipped", "documents"} | {"skipped"}
    run["dialogue"]      {"ppl", "bpb", "bleu", "bleu_impl", "dialogues", "reply_tokens", ...} | {"skipped"}
    results["reverse_test"]  {"steps", "own_loss", "reference_loss", "max_rel_diff", "diagnosis", ...}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from modernlm_jax.compare import plots
from modernlm_jax.compare import results as results_lib

LONG_CONTEXT_FIGURE = "long_context.png"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _mean(values: Sequence[float | None]) -> float | None:
  v = [float(x) for x in values if x is not None]
  return float(np.mean(v)) if v else None


def _fmt(x: float | None, fmt: str = "{:.4f}") -> str:
  return "not measured" if x is None else fmt.format(x)


def _groups(results: Mapping, key: str):
  """(scale, family, runs that have `key`, all ok runs) per scale × family."""
  for scale in results_lib.scales(results):
    for fam in results_lib.families(results):
      ok = results_lib.ok_runs(results, family=fam, scale=scale)
      if ok:
        yield scale, fam, [r for r in ok if r.get(key)], ok


# --------------------------------------------------------------------------- budgets


def budget_section(results: Mapping) -> list[str]:
  lines = ["## Training budgets", ""]
  base = results_lib.baseline_family(results)
  rows = []
  for scale, fam, runs, _ in _groups(results, "budget"):
    if not runs:
      continue
    b = [r["budget"] for r in runs]
    bpb = _mean([(r.get("final") or {}).get("bpb") for r in runs])
    ppl = _mean([(r.get("final") or {}).get("ppl") for r in runs])
    flops = _mean([x["train_flops"] for x in b])
    cer = None if not ppl or not flops else (1.0 / ppl) / (flops / 1e15)
    rows.append(
      [
        scale,
        fam,
        b[0]["kind"],
        int(_mean([x["steps"] for x in b])),
        f"{_mean([x['tokens'] for x in b]):,.0f}",
        f"{flops:.3e}",
        f"{_mean([x['flops_vs_baseline'] for x in b]):.4f}",
        _fmt(bpb),
        _fmt(ppl, "{:.2f}"),
        cer,
      ]
    )
  if not rows:
    return lines + ["No budget entries (runs predate compute-matched budgets).", ""]
  base_cer = {r[0]: r[9] for r in rows if r[1] == base}
  for r in rows:
    ref = base_cer.get(r[0])
    r.append("baseline" if r[1] == base else (_fmt(r[9] / ref, "{:.3f}") if r[9] and ref else "-"))
    r[9] = _fmt(r[9], "{:.4g}")
  kind = rows[0][2]
  lines += [
    f"Budget: **{kind}** ({'every member trains the same tokens' if kind == 'tokens' else 'each member trains the baseline training FLOPs'}). "
    "Training FLOPs use the MFU counter (6·N + attention, train/flops.py).",
    "",
  ]
  lines += _table(
    [
      "scale",
      "family",
      "budget",
      "steps",
      "tokens",
      "train FLOPs",
      "FLOPs / baseline",
      "val bpb",
      "val ppl",
      "CER (1/ppl per PFLOP)",
      f"compute-efficiency ratio vs {base}",
    ],
    rows,
  )
  return lines + [
    "",
    "Compute-efficiency ratio = (1/ppl ÷ training FLOPs) of the family over the baseline's: above 1, "
    "the family buys more quality per unit of training compute.",
    "",
  ]


# --------------------------------------------------------------------------- statefulness


def statefulness_section(results: Mapping) -> list[str]:
  lines = ["## Statefulness score (chance-corrected)", ""]
  rows, tiers = [], set()
  for scale, fam, runs, _ in _groups(results, "statefulness"):
    cc = [r["statefulness"]["chance_corrected"] for r in runs if r["statefulness"].get("chance_corrected")]
    if not cc:
      continue
    tiers |= {t for c in cc for t in c["tiers"]}
    rows.append((scale, fam, cc))
  if not rows:
    return lines + ["No chance-corrected scores (probes not run, or runs predate tier 3).", ""]
  tiers = sorted(tiers)
  out = []
  for scale, fam, cc in rows:

    def cell(get):
      vals = [get(c) for c in cc]
      vals = [v for v in vals if v is not None]
      if not vals:
        return "-"
      mean = float(np.mean([v["score"] for v in vals]))
      # seeds: the spread of per-seed scores; within a seed: the standard error over items
      se = math.sqrt(
        float(np.mean([v["se"] ** 2 for v in vals])) / len(vals)
        + (float(np.var([v["score"] for v in vals], ddof=1)) / len(vals) if len(vals) > 1 else 0.0)
      )
      return f"{mean:.3f} ± {se:.3f}"

    out.append(
      [scale, fam, cell(lambda c: c["overall"])] + [cell(lambda c, t=t: c["tiers"].get(t)) for t in tiers] + [len(cc)]
    )
  lines += _table(["scale", "family", "overall"] + [f"tier {t}" for t in tiers] + ["seeds"], out)
  return lines + [
    "",
    "Score = (accuracy − chance) / (1 − chance) per probe family (0 = chance, 1 = perfect), averaged "
    "with every family counted once per tier and once overall; ± is the standard error over probe "
    "items and training seeds. Tier 3 = persona consistency and topic threading (multi-turn dialogues).",
    "",
  ]


# --------------------------------------------------------------------------- long context


def _long_context_lines(results: Mapping) -> list[tuple[str, str, str, list[int], list[float | None]]]:
  out = []
  for scale, fam, runs, _ in _groups(results, "long_context"):
    runs = [r for r in runs if "modes" in r["long_context"]]
    if not runs:
      continue
    contexts = runs[0]["long_context"]["contexts"]
    for mode, m in runs[0]["long_context"]["modes"].items():
      vals = [
        r["long_context"]["modes"].get(mode, {}).get("bpb") for r in runs if r["long_context"]["contexts"] == contexts
      ]
      per_c = [_mean([v[i] for v in vals if v]) for i in range(len(contexts))]
      out.append((scale, fam, m["label"], contexts, per_c))
  return out


def plot_long_context(results: Mapping, path: Path) -> dict:
  series = _long_context_lines(results)
  if not any(any(v is not None for v in s[4]) for s in series):
    raise plots.MissingPlotData("no successful run recorded a long_context curve")
  fig, (ax,) = plots._new_figure()
  colors = plots._family_color(results)
  for i, (scale, fam, label, contexts, vals) in enumerate(series):
    xs = [c for c, v in zip(contexts, vals) if v is not None]
    ys = [v for v in vals if v is not None]
    if xs:
      ax.plot(
        xs,
        ys,
        plots._STYLES[i % len(plots._STYLES)],
        marker=plots._MARKERS[i % len(plots._MARKERS)],
        color=colors[fam],
        label=f"{fam} {scale}: {label}",
      )
  ax.set_xscale("log", base=2)
  ax.set_xlabel("context (tokens of history)")
  ax.set_ylabel("loss (bits/byte) at that context")
  ax.set_title("Long context: loss vs context (mean over seeds)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  return {"path": plots._save(fig, path), "notes": []}


def long_context_section(results: Mapping, out_dir: Path) -> list[str]:
  lines = ["## Long context", ""]
  series = _long_context_lines(results)
  skipped = []
  for scale, fam, runs, ok in _groups(results, "long_context"):
    for r in runs:
      lc = r["long_context"]
      if "modes" not in lc:
        skipped.append(f"{fam} {scale} s{r['seed']}: {lc.get('skipped')}")
      else:
        skipped += [f"{fam} {scale} s{r['seed']}: {k}: {v}" for k, v in (lc.get("skipped") or {}).items()]
    if not runs:
      skipped.append(f"{fam} {scale}: not run")
  (out_dir / LONG_CONTEXT_FIGURE).unlink(missing_ok=True)
  if not series:
    return lines + ["No long-context curve was measured."] + [f"- {s}" for s in sorted(set(skipped))] + [""]
  contexts = series[0][3]
  rows = [
    [scale, fam, label] + [_fmt(v) for v in (vals if c == contexts else [None] * len(contexts))]
    for scale, fam, label, c, vals in series
  ]
  docs = next(
    (
      r["long_context"].get("documents")
      for _, _, runs, _ in _groups(results, "long_context")
      for r in runs
      if "modes" in r["long_context"]
    ),
    "",
  )
  lines += [f"Loss in bits/byte of the tokens at positions [C/2, C) of {docs}, per way of running each member.", ""]
  lines += _table(
    ["scale", "family", "how it was run"] + [f"{c // 1024}K" if c % 1024 == 0 else str(c) for c in contexts], rows
  )
  lines.append("")
  try:
    fig = plot_long_context(results, out_dir / LONG_CONTEXT_FIGURE)
    lines += [f"![long context]({fig['path'].name})", ""]
  except plots.MissingPlotData as e:
    lines += [f"Figure not drawn: {e}.", ""]
  if skipped:
    lines += ["Not run:"] + [f"- {s}" for s in sorted(set(skipped))] + [""]
  return lines


# --------------------------------------------------------------------------- conversation


def dialogue_section(results: Mapping) -> list[str]:
  lines = ["## Conversational ability", ""]
  rows, skipped, impl, source = [], [], "", ""
  for scale, fam, runs, _ in _groups(results, "dialogue"):
    done = [r["dialogue"] for r in runs if "ppl" in r["dialogue"]]
    skipped += [f"{fam} {scale}: {r['dialogue']['skipped']}" for r in runs if "skipped" in r["dialogue"]]
    if not done:
      continue
    impl = impl or next((d.get("bleu_impl") for d in done if d.get("bleu_impl")), "")
    source = source or done[0].get("source", "")
    rows.append(
      [
        scale,
        fam,
        _fmt(_mean([d["ppl"] for d in done]), "{:.2f}"),
        _fmt(_mean([d["bpb"] for d in done])),
        _fmt(_mean([d.get("bleu") for d in done]), "{:.2f}"),
        done[0]["dialogues"],
        len(done),
      ]
    )
  if not rows:
    return lines + ["No conversational results."] + [f"- {s}" for s in sorted(set(skipped))] + [""]
  lines += [
    f"Held-out dialogues ({source}): perplexity and bits/byte of the last assistant reply given the "
    f"conversation before it; BLEU of the greedy reply against it ({impl or 'BLEU not run'}).",
    "",
  ]
  lines += _table(["scale", "family", "reply ppl", "reply bpb", "BLEU", "dialogues", "seeds"], rows)
  return lines + [""] + ([f"- {s}" for s in sorted(set(skipped))] + [""] if skipped else [])


# --------------------------------------------------------------------------- reverse test


def reverse_test_section(results: Mapping) -> list[str]:
  lines = ["## Reverse test: GPT-2 in this framework vs an independent reference", ""]
  rt = results.get("reverse_test")
  if not rt:
    return lines + [
      "Not run: `python -m modernlm_jax.jobs.reverse_test --results <results.json>` trains the gpt2 "
      "preset here and with a torch/transformers reference from the same weights and batches.",
      "",
    ]
  lines += _table(
    ["preset", "steps", "own final loss", "reference final loss", "max abs. rel. diff over logged steps", "diagnosis"],
    [
      [
        rt.get("preset"),
        rt.get("steps"),
        _fmt(rt.get("own_loss")),
        _fmt(rt.get("reference_loss")),
        _fmt(rt.get("max_rel_diff"), "{:.2%}"),
        rt.get("diagnosis"),
      ]
    ],
  )
  return lines + [
    "",
    f"Reference: {rt.get('reference', '')}. Rule: within ±5% → framework is correct; more than 10% "
    "worse → the training loop has bugs.",
    "",
  ]


def sections(results: Mapping, out_dir: str | Path) -> list[str]:
  out_dir = Path(out_dir)
  return (
    budget_section(results)
    + statefulness_section(results)
    + long_context_section(results, out_dir)
    + dialogue_section(results)
    + reverse_test_section(results)
  )

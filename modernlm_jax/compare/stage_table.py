"""Stage table: how each metric moves from pretraining through SFT and DPO.

``flatten_metrics(result) -> dict[str, float]``
    A :func:`modernlm_jax.eval.suite.run_suite` result as ``{"perplexity/wikitext2:test/perplexity":
    27.0, "tasks/sst2/acc": 0.5, "statefulness/overall_acc": ...}`` (skipped entries dropped).
``stage_deltas(stages, metrics=None) -> dict[metric, list[dict]]``
    ``stages`` is an ordered mapping stage name -> suite result (or an already flat metric
    dict). Per metric and stage: value, change from the previous stage and cumulative change
    from the first stage, each absolute and relative (relative = change / earlier value).
``stage_table(stages, metrics=None) -> str``
    Markdown: one values table (stages x metrics) and one delta table per metric.
When ``metrics`` is None the headline metrics present in every stage are used
(``headline_suffixes()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modernlm_jax.eval.fewshot.registry import TASKS


def headline_suffixes() -> tuple[str, ...]:
  """Perplexity and bits/byte of every corpus, each registered task's headline metric, the probe score."""
  return (
    "/perplexity",
    "/bits_per_byte",
    *(f"tasks/{n}/{t.headline}" for n, t in TASKS.items()),
    "statefulness/overall_acc",
  )


_PERPLEXITY_KEYS = ("perplexity", "bits_per_byte", "word_perplexity", "nats_per_token")
_TASK_KEYS = ("acc", "acc_norm", "perplexity", "exact_match_strict", "exact_match_flexible")  # and every task's own


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def flatten_metrics(result: Mapping[str, Any]) -> dict[str, float]:
  """Flat numeric metrics of a suite result; a flat numeric mapping is returned as is."""
  if all(_is_number(v) for v in result.values()):
    return {k: float(v) for k, v in result.items()}
  flat: dict[str, float] = {}
  for corpus, r in result.get("perplexity", {}).items():
    flat.update({f"perplexity/{corpus}/{k}": float(r[k]) for k in _PERPLEXITY_KEYS if k in r})
  for task, r in result.get("tasks", {}).items():
    keys = set(_TASK_KEYS) | set(TASKS[task].metrics if task in TASKS else ())
    flat.update({f"tasks/{task}/{k}": float(r[k]) for k in sorted(keys) if k in r and _is_number(r[k])})
  st = result.get("statefulness")
  if st:
    flat["statefulness/overall_acc"] = float(st["overall_acc"])
    flat.update({f"statefulness/{t}/acc": float(r["acc"]) for t, r in st["tiers"].items()})
    flat.update({f"statefulness/distance_{d}/acc": float(r["acc"]) for d, r in st["by_distance"].items()})
  return flat


def _relative(delta: float, base: float) -> float | None:
  return None if base == 0 else delta / abs(base)


def stage_deltas(
  stages: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
  """Per metric, one row per stage: value and absolute/relative changes; see module docstring."""
  if not stages:
    raise ValueError("stage_deltas needs at least one stage")
  flat = {stage: flatten_metrics(r) for stage, r in stages.items()}
  common = set.intersection(*(set(f) for f in flat.values()))
  if metrics is None:
    metrics = sorted(m for m in common if m.endswith(headline_suffixes()))
  else:
    for stage, f in flat.items():
      missing = [m for m in metrics if m not in f]
      if missing:
        raise KeyError(f"stage {stage!r} lacks metrics {missing}; available: {sorted(f)}")
  table: dict[str, list[dict[str, Any]]] = {}
  for m in metrics:
    rows, first, prev = [], None, None
    for stage, f in flat.items():
      v = f[m]
      row: dict[str, Any] = {"stage": stage, "value": v}
      if prev is not None:
        row.update(
          delta_prev=v - prev,
          rel_prev=_relative(v - prev, prev),
          delta_cum=v - first,
          rel_cum=_relative(v - first, first),
        )
      first = v if first is None else first
      prev = v
      rows.append(row)
    table[m] = rows
  return table


def _num(x: float) -> str:
  if math.isnan(x):
    return "nan"
  return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _delta(d: float | None, rel: float | None) -> str:
  if d is None:
    return "—"
  rel_s = "" if rel is None else f" ({rel * 100:+.1f}%)"
  return f"{'+' if d >= 0 else ''}{_num(d)}{rel_s}"


def stage_table(stages: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] | None = None) -> str:
  """Markdown stage table (values, then per-metric deltas); see module docstring."""
  deltas = stage_deltas(stages, metrics)
  if not deltas:
    return "No metric is present in every stage.\n"
  names = list(deltas)
  lines = ["| stage | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for i, stage in enumerate(stages):
    lines.append(f"| {stage} | " + " | ".join(_num(deltas[m][i]["value"]) for m in names) + " |")
  for m in names:
    lines += ["", f"**{m}**", "", "| stage | value | Δ from previous | cumulative Δ |", "|---|---|---|---|"]
    for row in deltas[m]:
      lines.append(
        f"| {row['stage']} | {_num(row['value'])} | "
        f"{_delta(row.get('delta_prev'), row.get('rel_prev'))} | "
        f"{_delta(row.get('delta_cum'), row.get('rel_cum'))} |"
      )
  return "\n".join(lines) + "\n"

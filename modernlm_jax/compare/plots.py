"""PNG plots of a matched comparison, drawn from results.json alone.

Figures are built on matplotlib's Agg canvas directly (no pyplot), so importing this module never
changes the global backend and plotting works headless. Each `plot_*` function returns the written
path plus notes about data it had to leave out, or raises `MissingPlotData` naming exactly what is
missing, which the report prints in place of the figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare import scaling as scaling_lib

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_DPI = 120


class MissingPlotData(ValueError):
  """Raised when results hold no data for a figure; the message says what is missing."""


def _family_color(results: Mapping) -> dict[str, str]:
  return {f: _COLORS[i % len(_COLORS)] for i, f in enumerate(results_lib.families(results))}


def _scale_index(results: Mapping) -> dict[str, int]:
  return {s: i for i, s in enumerate(results_lib.scales(results))}


def _new_figure(ncols: int = 1) -> tuple[Figure, list]:
  fig = Figure(figsize=(6.4 * ncols, 4.6), dpi=_DPI)
  FigureCanvasAgg(fig)
  axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
  return fig, axes


def _save(fig: Figure, path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  # No timestamp/software metadata, so regenerated PNGs are byte-stable.
  fig.savefig(path, format="png", metadata={"Software": None})
  return path


def _seed_band(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean and ±std of several (x, y) series on the first series' grid, over their shared x range."""
  lo = max(float(x[0]) for x, _ in series)
  hi = min(float(x[-1]) for x, _ in series)
  grid = series[0][0]
  grid = grid[(grid >= lo) & (grid <= hi)]
  ys = np.stack([np.interp(grid, x, y) for x, y in series])
  std = ys.std(axis=0, ddof=1) if len(series) > 1 else np.zeros_like(grid)
  return grid, ys.mean(axis=0), std


def plot_val_curves(results: Mapping, path: Path) -> dict:
  """Validation loss vs tokens, one line per family × scale, ±1 std band over seeds."""
  fig, (ax,) = _new_figure()
  colors, sidx = _family_color(results), _scale_index(results)
  drawn = 0
  for fam in results_lib.families(results):
    for scale in results_lib.scales(results):
      series = []
      for run in results_lib.ok_runs(results, family=fam, scale=scale):
        c = run["curves"]
        xs = c.get("val_tokens", c["tokens"])
        pts = [(float(x), float(y)) for x, y in zip(xs, c["val_loss"]) if y is not None]
        if len(pts) >= 2:
          arr = np.asarray(pts)
          series.append((arr[:, 0], arr[:, 1]))
      if not series:
        continue
      grid, mean, std = _seed_band(series)
      style = _STYLES[sidx[scale] % len(_STYLES)]
      ax.plot(grid, mean, style, color=colors[fam], label=f"{fam} {scale} (n={len(series)})")
      if len(series) > 1:
        ax.fill_between(grid, mean - std, mean + std, color=colors[fam], alpha=0.2, linewidth=0)
      drawn += 1
  if not drawn:
    raise MissingPlotData("no successful run has at least 2 logged validation-loss points")
  ax.set_xlabel("training tokens")
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_title("Validation loss (mean ± 1 std over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return {"path": _save(fig, path), "notes": []}


def plot_scaling_law(results: Mapping, fits: Mapping[str, dict | None], path: Path, unit: str = "val_loss") -> dict:
  """Final validation loss (`unit`: "val_loss" nats/token or "bpb" bits/byte) vs parameters on log-log axes,
  seed points, means and fitted laws."""
  key = {"val_loss": "val_loss", "bpb": "bpb"}[unit]
  fig, (ax,) = _new_figure()
  colors = _family_color(results)
  notes, drawn = [], 0
  all_n = [float(r["params"]) for r in results_lib.ok_runs(results)]
  if not all_n:
    raise MissingPlotData("no successful runs, so there are no (parameters, loss) points")
  n_grid = np.geomspace(min(all_n) / 1.3, max(all_n) * 1.3, 200)
  for fam in results_lib.families(results):
    runs = [r for r in results_lib.ok_runs(results, family=fam) if r["final"].get(key) is not None]
    if not runs:
      continue
    n = np.array([r["params"] for r in runs], dtype=float)
    y = np.array([r["final"][key] for r in runs], dtype=float)
    ax.scatter(n, y, color=colors[fam], alpha=0.45, s=18)
    means = []
    for scale in results_lib.scales(results):
      sel = np.array([r["scale"] == scale for r in runs])
      if sel.any():
        means.append((float(np.median(n[sel])), float(np.mean(y[sel]))))
    ax.plot(
      [m[0] for m in means],
      [m[1] for m in means],
      _MARKERS[0],
      color=colors[fam],
      markersize=7,
      label=f"{fam} (mean per scale)",
    )
    fit = fits.get(fam)
    if fit is not None:
      label = f"{fam} fit: {fit['a']:.3g}·N^-{fit['b']:.3f} + {fit['c']:.3g}"
      ax.plot(n_grid, scaling_lib.predict(fit, n_grid), "-", color=colors[fam], alpha=0.8, label=label)
    else:
      notes.append(f"{fam}: no fitted curve (fewer than 2 successful scales)")
    drawn += 1
  ax.set_xscale("log")
  ax.set_yscale("log")
  # Loss spans well under a decade, so log-axis labels like 4.5×10⁰ would be unreadable.
  ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
  ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
  ax.tick_params(axis="y", which="minor", labelsize=7)
  ax.set_xlabel("parameters N")
  ax.set_ylabel("final validation bits/byte" if unit == "bpb" else "final validation loss (nats/token)")
  ax.set_title("Scaling law L(N) = a·N^(−b) + c")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  return {"path": _save(fig, path), "notes": notes}


def plot_context_scaling(results: Mapping, path: Path) -> dict:
  """Prefill time and compiled memory vs context length (log-log), seed means per family × scale."""
  colors, sidx = _family_color(results), _scale_index(results)
  time_series, mem_series = [], []
  for fam in results_lib.families(results):
    for scale in results_lib.scales(results):
      rows = [
        r["inference"]["context_scaling"]
        for r in results_lib.ok_runs(results, family=fam, scale=scale)
        if (r.get("inference") or {}).get("context_scaling")
      ]
      if not rows:
        continue
      lengths = rows[0]["lengths"]
      same = [cs for cs in rows if cs["lengths"] == lengths]
      times = np.mean([cs["times"] for cs in same], axis=0)
      time_series.append((fam, scale, lengths, times))
      mems = [cs["mem_bytes"] for cs in same if cs.get("mem_bytes") and all(m is not None for m in cs["mem_bytes"])]
      if mems:
        mem_series.append((fam, scale, lengths, np.mean(mems, axis=0)))
  if not time_series:
    raise MissingPlotData("no successful run recorded inference.context_scaling")
  notes = []
  ncols = 2 if mem_series else 1
  if not mem_series:
    notes.append("memory vs length not plotted: no run recorded context_scaling.mem_bytes")
  fig, axes = _new_figure(ncols)
  for fam, scale, lengths, times in time_series:
    style = _STYLES[sidx[scale] % len(_STYLES)]
    axes[0].plot(lengths, times, style, marker="o", color=colors[fam], label=f"{fam} {scale}")
  t0 = np.asarray(time_series[0][2], dtype=float)
  ref = float(np.min([s[3][0] for s in time_series]))
  axes[0].plot(t0, ref * t0 / t0[0], color="0.6", lw=0.8, label="∝ T (linear)")
  axes[0].plot(t0, ref * (t0 / t0[0]) ** 2, color="0.3", lw=0.8, ls="--", label="∝ T² (quadratic)")
  axes[0].set_title("Prefill time vs context length")
  axes[0].set_ylabel("median prefill time (s)")
  if mem_series:
    for fam, scale, lengths, mem in mem_series:
      style = _STYLES[sidx[scale] % len(_STYLES)]
      axes[1].plot(lengths, np.asarray(mem) / 2**20, style, marker="s", color=colors[fam], label=f"{fam} {scale}")
    axes[1].set_title("Compiled prefill memory vs context length")
    axes[1].set_ylabel("MiB")
  for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length T (tokens)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  return {"path": _save(fig, path), "notes": notes}


def plot_statefulness(results: Mapping, path: Path) -> dict:
  """Statefulness probe accuracy vs distance, seed means per family × scale."""
  colors, sidx = _family_color(results), _scale_index(results)
  fig, (ax,) = _new_figure()
  drawn = 0
  for fam in results_lib.families(results):
    for scale in results_lib.scales(results):
      per_d: dict[float, list[float]] = {}
      for r in results_lib.ok_runs(results, family=fam, scale=scale):
        for d, acc in ((r.get("statefulness") or {}).get("by_distance") or {}).items():
          per_d.setdefault(float(d), []).append(float(acc))
      if not per_d:
        continue
      ds = sorted(per_d)
      style = _STYLES[sidx[scale] % len(_STYLES)]
      ax.plot(ds, [np.mean(per_d[d]) for d in ds], style, marker="o", color=colors[fam], label=f"{fam} {scale}")
      drawn += 1
  if not drawn:
    raise MissingPlotData("no successful run recorded statefulness.by_distance")
  distances = sorted({float(x) for line in ax.get_lines() for x in line.get_xdata()})
  if distances[0] > 0:
    ax.set_xscale("log")
  # Tick exactly the probed distances, printed plainly (log axes would print 6×10⁰).
  ax.set_xticks(distances)
  ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
  ax.xaxis.set_minor_formatter(NullFormatter())
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("distance between fact and question")
  ax.set_ylabel("recall accuracy")
  ax.set_title("Statefulness: accuracy vs distance (mean over seeds)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  return {"path": _save(fig, path), "notes": []}

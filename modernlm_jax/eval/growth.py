"""Growth exponent of a measurement against context length (time or memory vs tokens), with its label."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def growth_label(exponent: float) -> str:
  """Names a time-vs-length growth exponent; the cut points sit halfway between integer orders."""
  if not math.isfinite(exponent):
    return "undetermined"
  if exponent < 0.5:
    return "sub-linear (overhead dominated)"
  if exponent < 1.5:
    return "linear"
  if exponent < 2.5:
    return "quadratic"
  return "super-quadratic"


def growth_exponent(lengths: Sequence[float], values: Sequence[float]) -> dict:
  """Slope of log(value) vs log(length) with its R² and a linear/quadratic label.

  Used for prefill time (and compiled memory) against context length.
  """
  t = np.asarray(lengths, dtype=np.float64)
  v = np.asarray(values, dtype=np.float64)
  if t.shape != v.shape or t.ndim != 1:
    raise ValueError(f"lengths and values must be 1-D and equally long, got {t.shape} and {v.shape}")
  if np.unique(t).size < 2:
    raise ValueError("a growth exponent needs at least 2 distinct context lengths, e.g. [256, 512, 1024, 2048]")
  if np.any(t <= 0) or np.any(v <= 0) or not np.all(np.isfinite(v)):
    raise ValueError("growth exponent needs positive lengths and positive finite measurements")
  lx, ly = np.log(t), np.log(v)
  design = np.stack([np.ones_like(lx), lx], axis=1)
  coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
  pred = design @ coef
  ss_res = float(np.sum((ly - pred) ** 2))
  ss_tot = float(np.sum((ly - ly.mean()) ** 2))
  r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
  exponent = float(coef[1])
  return {"exponent": exponent, "r2": r2, "label": growth_label(exponent)}

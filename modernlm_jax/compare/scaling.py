"""Scaling-law fits with numpy only: L(N) = a·N^(−b) + c, and context-length growth exponents.

Parameter scaling. The matched-comparison protocol expects loss to follow ``L = a·N^(−b) + c``
with N the parameter count; a steeper ``b`` means more parameter-efficient. With only a handful
of scales (2–5) a general nonlinear solver is fragile, so the fit is staged:

1. profile over the offset ``c``: for each ``c`` in a grid on ``[0, min(L))`` the remaining model
   ``log(L − c) = log a − b·log N`` is linear and solved by least squares; the grid point with the
   smallest squared error *in L space* wins, then a golden-section search refines ``c`` inside the
   neighbouring grid cells;
2. a few Levenberg–Marquardt steps on ``(log a, b, c)`` with residuals in L space polish the result.

With fewer than three points three parameters are not identifiable, so the pure power law
``c = 0`` is fitted instead and the result says so (``kind = "pure_power_law"``).

Context scaling. Prefill time vs context length ``T`` is summarized by the slope of
``log time`` against ``log T`` (1 ≈ linear, 2 ≈ quadratic). Fixed per-call overhead flattens the
slope at short lengths, so a quadratic mixer can look linear when the lengths are small.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from modernlm_jax.eval.growth import growth_exponent, growth_label  # noqa: F401  (re-exported)

_GRID_POINTS = 256
_GOLDEN_ITERS = 60
_LM_ITERS = 50


def _as_points(n_params: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  n = np.asarray(n_params, dtype=np.float64)
  y = np.asarray(losses, dtype=np.float64)
  if n.shape != y.shape or n.ndim != 1:
    raise ValueError(f"n_params and losses must be 1-D and equally long, got shapes {n.shape} and {y.shape}")
  if not (np.all(np.isfinite(n)) and np.all(np.isfinite(y))):
    raise ValueError("scaling fit got non-finite values; drop failed runs before fitting")
  if np.any(n <= 0) or np.any(y <= 0):
    raise ValueError("scaling fit needs positive parameter counts and positive losses")
  if np.unique(n).size < 2:
    raise ValueError(
      f"a scaling law needs at least 2 distinct parameter counts, got {np.unique(n).size}; train more scales"
    )
  return n, y


def _loglinear_fit(x: np.ndarray, y_shifted: np.ndarray) -> tuple[float, float]:
  """Least squares of log(y_shifted) = log_a − b·x; returns (log_a, b)."""
  design = np.stack([np.ones_like(x), -x], axis=1)
  coef, *_ = np.linalg.lstsq(design, np.log(y_shifted), rcond=None)
  return float(coef[0]), float(coef[1])


def _sse_at_c(x: np.ndarray, y: np.ndarray, c: float) -> tuple[float, float, float]:
  log_a, b = _loglinear_fit(x, y - c)
  pred = np.exp(log_a - b * x) + c
  return float(np.sum((pred - y) ** 2)), log_a, b


def _golden_min(f, lo: float, hi: float, iters: int) -> float:
  inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
  a, b = lo, hi
  c1 = b - inv_phi * (b - a)
  c2 = a + inv_phi * (b - a)
  f1, f2 = f(c1), f(c2)
  for _ in range(iters):
    if f1 < f2:
      b, c2, f2 = c2, c1, f1
      c1 = b - inv_phi * (b - a)
      f1 = f(c1)
    else:
      a, c1, f1 = c1, c2, f2
      c2 = a + inv_phi * (b - a)
      f2 = f(c2)
  return (a + b) / 2.0


def _levenberg_marquardt(x: np.ndarray, y: np.ndarray, theta: np.ndarray, c_max: float) -> np.ndarray:
  """Polishes theta = (log_A, b, c) for y ≈ exp(log_A − b·x) + c, keeping 0 ≤ c < c_max."""

  def residual(t: np.ndarray) -> np.ndarray:
    return np.exp(t[0] - t[1] * x) + t[2] - y

  lam = 1e-3
  r = residual(theta)
  cost = float(r @ r)
  for _ in range(_LM_ITERS):
    e = np.exp(theta[0] - theta[1] * x)
    jac = np.stack([e, -x * e, np.ones_like(x)], axis=1)
    jtj = jac.T @ jac
    grad = jac.T @ r
    improved = False
    for _ in range(20):
      step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -grad)
      cand = theta + step
      cand[2] = min(max(cand[2], 0.0), c_max)
      r_new = residual(cand)
      cost_new = float(r_new @ r_new)
      if cost_new < cost:
        theta, r, cost = cand, r_new, cost_new
        lam = max(lam / 10.0, 1e-12)
        improved = True
        break
      lam *= 10.0
    if not improved or float(np.linalg.norm(step)) < 1e-12:
      break
  return theta


def fit_power_law(n_params: Sequence[float], losses: Sequence[float]) -> dict:
  """Fits L(N) = a·N^(−b) + c; returns a dict describing the fit and how it was obtained.

  Keys: a, b, c, kind ("power_law_with_offset" | "pure_power_law"), n_points, rms_residual,
  note (human-readable explanation of any restriction), n_params, losses (sorted by N).
  Repeated N values (several seeds) are allowed and fitted jointly.
  """
  n, y = _as_points(n_params, losses)
  order = np.argsort(n)
  n, y = n[order], y[order]
  # Centering log N decorrelates the (log a, b) columns, which keeps LM well conditioned.
  x_mean = float(np.mean(np.log(n)))
  x = np.log(n) - x_mean
  distinct = int(np.unique(n).size)

  if distinct < 3:
    log_amp, b = _loglinear_fit(x, y)
    c = 0.0
    kind = "pure_power_law"
    note = (
      f"only {distinct} distinct scales: the offset c is not identifiable, so the pure power law "
      "L = a·N^(−b) (c = 0) was fitted"
    )
  else:
    c_max = float(np.min(y)) * (1.0 - 1e-9)
    grid = np.linspace(0.0, c_max, _GRID_POINTS, endpoint=False)
    sses = [_sse_at_c(x, y, c)[0] for c in grid]
    best = int(np.argmin(sses))
    lo = grid[max(best - 1, 0)]
    hi = grid[best + 1] if best + 1 < grid.size else c_max
    c = _golden_min(lambda cc: _sse_at_c(x, y, cc)[0], float(lo), float(hi), _GOLDEN_ITERS)
    _, log_amp, b = _sse_at_c(x, y, c)
    theta = _levenberg_marquardt(x, y, np.array([log_amp, b, c]), c_max)
    log_amp, b, c = (float(v) for v in theta)
    kind = "power_law_with_offset"
    note = f"3-parameter fit over {distinct} scales"
    if c <= 1e-9 * c_max:
      note += "; the best offset is c = 0 (no irreducible-loss term detected)"
    elif c >= c_max * (1 - 1e-6):
      note += "; the offset hit its bound min(L), so the fit is poorly constrained"

  a = math.exp(log_amp + b * x_mean)
  pred = a * n ** (-b) + c
  rms = float(np.sqrt(np.mean((pred - y) ** 2)))
  return {
    "a": a,
    "b": float(b),
    "c": float(c),
    "kind": kind,
    "n_points": int(n.size),
    "n_scales": distinct,
    "rms_residual": rms,
    "note": note,
    "n_params": n.tolist(),
    "losses": y.tolist(),
  }


def predict(fit: dict, n_params: float | Sequence[float] | np.ndarray) -> np.ndarray:
  """Evaluates a fit from `fit_power_law` at parameter counts N."""
  n = np.asarray(n_params, dtype=np.float64)
  return fit["a"] * n ** (-fit["b"]) + fit["c"]

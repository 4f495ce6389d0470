"""The protocol's smoke tests, run before trusting a comparison.

- overfit: each family memorises a tiny fixed set of real training text (the first rows of the
  shared first batch) with a jitted train step; it should reach near-zero loss.
- gradient norm at initialisation: the first logged step of each family's member run, which
  computes the gradient at the initial parameters on the shared first batch.
- data fraction: each family's training-loss points over the first `data_fraction` of the token
  budget (extended to `min_points` logged points when the run logs too sparsely for a slope).

The checks themselves (thresholds, pass/fail) live in `compare.decision.smoke_checks`; the
comparison runs them before full training and a failed check stops it with FIX FIRST unless
`compare.smoke.gate=False` (see `jobs/compare.py`).
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np

from modernlm_jax.model import ModelConfig, init_params
from modernlm_jax.train.optim import learning_rate_schedule, make_optimizer
from modernlm_jax.train.registry import make_objective
from modernlm_jax.train.step import create_state, make_train_step

log = logging.getLogger(__name__)


def overfit_batch(first_batch: dict, rows: int, length: int) -> dict:
  """The first `rows` × `length` tokens of a training batch, as a fixed batch."""
  have_rows, have_len = first_batch["inputs"].shape
  if rows > have_rows or length > have_len:
    raise ValueError(
      f"smoke.overfit_rows × overfit_len = {rows}×{length} exceeds the first batch ({have_rows}×{have_len}); lower them"
    )
  return {k: np.asarray(v[:rows, :length]) for k, v in first_batch.items()}


def overfit(member_cfg, batch: dict, *, steps: int, lr: float) -> dict:
  """Trains a fresh model of `member_cfg.model` on one fixed batch; returns first/final loss."""
  cfg = member_cfg.copy_and_resolve_references()
  cfg.train.update(
    dict(
      steps=steps,
      lr=lr,
      warmup_steps=min(10, steps // 10),
      schedule="constant",
      weight_decay=0.0,
      grad_clip=1.0,
      accum_steps=1,
    )
  )
  model_cfg = ModelConfig.from_dict(cfg.model)
  opt = make_optimizer(cfg.train, jax.eval_shape(lambda: init_params(model_cfg, int(cfg.seed))))
  step = jax.jit(make_train_step(make_objective(cfg), opt, learning_rate_schedule(cfg.train)))
  state = create_state(model_cfg, opt, int(cfg.seed))
  first = last = None
  for _ in range(steps):
    state, m = step(state, batch)
    if first is None:
      first = float(m["loss"])
  last = float(m["loss"])
  return {"first_loss": first, "final_loss": last, "steps": steps}


def fraction_steps(total_steps: int, fraction: float, min_points: int, log_every: int) -> int:
  """Steps of the 1 %-data test: `fraction` of the run, but enough for `min_points` logged losses."""
  want = max(math.ceil(fraction * total_steps), (max(min_points, 2) - 1) * max(log_every, 1), 1)
  return min(int(want), int(total_steps))


def data_fraction_curve(curves: dict, token_budget: int, fraction: float, min_points: int) -> tuple[dict, float]:
  """Training-loss points within `fraction` of the budget (at least `min_points`); also the fraction used."""
  tokens, losses = curves["tokens"], curves["train_loss"]
  pts = [(t, l) for t, l in zip(tokens, losses) if l is not None and t > 0]
  inside = [p for p in pts if p[0] <= fraction * token_budget]
  if len(inside) < min_points:
    inside = pts[:min_points]
  used = inside[-1][0] / token_budget if inside else 0.0
  return {"tokens": [int(t) for t, _ in inside], "train_loss": [float(l) for _, l in inside]}, used


def smoke_entry(
  scale: str,
  *,
  overfit_results: dict[str, dict],
  overfit_size: int,
  grad_norms: dict[str, float],
  fraction_curves: dict[str, dict],
  fraction_used: float,
) -> dict:
  out = {
    "scale": scale,
    "data_fraction": {"fraction": float(fraction_used), "by_family": fraction_curves},
    "overfit": {
      "size": int(overfit_size),
      "unit": "tokens",
      "by_family": {
        f: {"final_loss": r["final_loss"], "first_loss": r["first_loss"], "steps": r["steps"]}
        for f, r in overfit_results.items()
      },
    },
    "grad_norm": {"by_family": {f: float(v) for f, v in grad_norms.items()}},
  }
  return out

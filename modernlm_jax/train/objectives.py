"""Training objectives. Each returns a loss *sum* and a params-independent weight (tokens or pairs).

Sums rather than means make gradient accumulation exact: k micro-batches of b rows give the same
gradient as one batch of k·b rows, because the division by the whole batch's weight happens once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from modernlm_jax.model import LanguageModel, ModelConfig, output_embedding
from modernlm_jax.train.fused_ce import cross_entropy_terms, fused_cross_entropy  # noqa: F401  (re-exported)


def sigreg_real(h_ND, rng, num_directions: int = 64, num_points: int = 17, t_max: float = 4.0):
  """SIGReg (from LeJEPA) on the real part of the characteristic function.

  Projects features on random unit directions and penalises the squared gap between the empirical
  characteristic function's real part E[cos(t·z)] and the standard Gaussian's exp(-t²/2), weighted by
  exp(-t²/2) and integrated over t (trapezoid). Features are standardised per direction first, so
  the term shapes the distribution, not its scale. Only the real part is used: in our runs (and the
  modification log this codebase follows) the imaginary part fought RMSNorm.
  """
  h = h_ND.astype(jnp.float32)
  dirs = jax.random.normal(rng, (h.shape[-1], num_directions))
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
  z = h @ dirs
  z = (z - z.mean(0)) / (z.std(0) + 1e-6)
  t = jnp.linspace(-t_max, t_max, num_points)
  ecf_real = jnp.mean(jnp.cos(t[:, None, None] * z[None]), axis=1)  # [points, directions]
  gauss = jnp.exp(-0.5 * t**2)[:, None]
  integrand = (ecf_real - gauss) ** 2 * gauss
  return jnp.mean(jnp.trapezoid(integrand, t, axis=0))


@dataclasses.dataclass(frozen=True)
class NextTokenObjective:
  """Next-token cross-entropy over `loss_mask` (pretraining; SFT when the mask covers responses only)."""

  model_cfg: ModelConfig
  z_loss: float = 0.0
  sigreg_weight: float = 0.0
  loss_chunk: int = 0
  name: str = "next_token"
  # False when the data never isolates documents (every row is one segment): the model then sees a plain
  # causal mask, which is the same function and lets flash kernels (cuDNN) run instead of masked XLA attention.
  use_segment_ids: bool = True

  def weight(self, batch) -> jax.Array:
    return jnp.sum(batch["loss_mask"].astype(jnp.float32))

  def hidden(self, params, batch):
    return LanguageModel(self.model_cfg).apply(
        {"params": params}, batch["inputs"], positions=batch.get("positions"),
        segment_ids=batch.get("segment_ids") if self.use_segment_ids else None, return_hidden=True)

  def loss_sums(self, params, batch, rng, extra=None) -> tuple[jax.Array, dict[str, Any]]:
    h = self.hidden(params, batch)
    D = h.shape[-1]
    total, nll_sum, z = fused_cross_entropy(h.reshape(-1, D), output_embedding(params, self.model_cfg),
                                            batch["targets"].reshape(-1), batch["loss_mask"].reshape(-1),
                                            self.loss_chunk, float(self.z_loss))
    metrics = {"loss": nll_sum}
    if self.z_loss:
      metrics["z_loss"] = z
    if self.sigreg_weight:
      # Scaled by the weight so it acts per token after the division by the batch weight.
      reg = sigreg_real(h.reshape(-1, h.shape[-1]), rng)
      total = total + self.sigreg_weight * reg * self.weight(batch)
      metrics["sigreg"] = reg * self.weight(batch)
    return total, metrics


def make_objective(config) -> Callable:
  from modernlm_jax.model import ModelConfig as _MC

  model_cfg = _MC.from_dict(config.model)
  kind = config.get("objective", "next_token")
  t = config.train
  if kind in ("next_token", "sft"):
    use_segments = kind == "sft" or bool(config.get("data", {}).get("isolate_documents", True))
    return NextTokenObjective(model_cfg, z_loss=float(t.z_loss), sigreg_weight=float(t.sigreg_weight),
                              loss_chunk=int(t.loss_chunk), name=kind, use_segment_ids=use_segments)
  if kind == "dpo":
    from modernlm_jax.train.dpo import DPOObjective

    return DPOObjective(model_cfg, beta=float(config.dpo.beta), loss_chunk=int(t.loss_chunk))
  raise ValueError(f"objective={kind!r} is not valid; choose one of ['next_token', 'sft', 'dpo']")

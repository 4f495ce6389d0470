"""The objective contract and the next-token objective. Each returns a loss *sum* and a params-independent
weight (tokens or pairs).

Sums rather than means make gradient accumulation exact: k micro-batches of b rows give the same
gradient as one batch of k·b rows, because the division by the whole batch's weight happens once.
Objectives are looked up by name in `train/registry.py`; a new one is a file with its class and one
registry line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from modernlm_jax.model import LanguageModel, ModelConfig, output_embedding
from modernlm_jax.train.fused_ce import cross_entropy_terms, fused_cross_entropy  # noqa: F401  (re-exported)


def sigreg_real(h_ND, rng, num_directions: int = 64, num_points: int = 17, t_max: float = 4.0):
  """SIGReg (LeJEPA, arXiv 2511.08544): the Epps–Pulley distance of random 1-D projections from N(0, 1).

  Projects the features on `num_directions` random unit directions z = h·d and, per direction,
  integrates the squared gap between the empirical characteristic function and the standard normal's,
  exp(-t²/2), weighted by exp(-t²/2), over t in [-t_max, t_max] (trapezoid); the mean over directions
  is returned. The projections are NOT standardised: SIGReg exists to penalise collapse (a direction
  with no spread), anisotropy and a wrong scale, which standardising each projection would hide.
  Only the real part E[cos(t·z)] is compared (the modification log this codebase follows found the
  imaginary part fighting RMSNorm); the real part is blind to odd asymmetry (e.g. a shifted mean).
  The Epps–Pulley factor N is left out, so the value estimates the population distance (≈ 0 for
  N(0, I), whatever the batch size) and `train.sigreg_weight` does not depend on the token count.
  """
  h = h_ND.astype(jnp.float32)
  dirs = jax.random.normal(rng, (h.shape[-1], num_directions))
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
  z = h @ dirs  # [N, directions]
  t = jnp.linspace(-t_max, t_max, num_points)
  ecf_real = jnp.mean(jnp.cos(t[:, None, None] * z[None]), axis=1)  # [points, directions]
  gauss = jnp.exp(-0.5 * t**2)[:, None]
  integrand = (ecf_real - gauss) ** 2 * gauss
  return jnp.mean(jnp.trapezoid(integrand, t, axis=0))


class Objective(Protocol):
  """What the training loop asks of a stage's loss.

  - `batch_kind`: "tokens" (rows of inputs/targets/positions/segment_ids/loss_mask) or "pairs" (`chosen_*` and
    `rejected_*` versions of those keys); the post-training job picks its data pipeline from it.
  - `needs_reference`: the loop keeps a frozen copy of the initial parameters and passes it as `ref_params`.
  - `reports_perplexity`: the loss is a per-token negative log-likelihood, so `val_ppl` means something.
  - `weight(batch)`: tokens or pairs in the batch, independent of the parameters.
  - `loss_sums(params, batch, rng, ref_params=None) -> (total, {metric: sum})`: only `total` is differentiated.
  """

  name: str
  batch_kind: str
  needs_reference: bool
  reports_perplexity: bool

  def weight(self, batch) -> jax.Array: ...

  def loss_sums(self, params, batch, rng, ref_params=None) -> tuple[jax.Array, dict[str, Any]]: ...


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
  batch_kind = "tokens"
  needs_reference = False
  reports_perplexity = True

  def weight(self, batch) -> jax.Array:
    return jnp.sum(batch["loss_mask"].astype(jnp.float32))

  def hidden(self, params, batch):
    return LanguageModel(self.model_cfg).apply(
      {"params": params},
      batch["inputs"],
      positions=batch.get("positions"),
      segment_ids=batch.get("segment_ids") if self.use_segment_ids else None,
      return_hidden=True,
    )

  def loss_sums(self, params, batch, rng, ref_params=None) -> tuple[jax.Array, dict[str, Any]]:
    del ref_params
    h = self.hidden(params, batch)
    D = h.shape[-1]
    total, nll_sum, z = fused_cross_entropy(
      h.reshape(-1, D),
      output_embedding(params, self.model_cfg),
      batch["targets"].reshape(-1),
      batch["loss_mask"].reshape(-1),
      self.loss_chunk,
      float(self.z_loss),
    )
    metrics = {"loss": nll_sum}
    if self.z_loss:
      metrics["z_loss"] = z
    if self.sigreg_weight:
      # Scaled by the weight so it acts per token after the division by the batch weight.
      reg = sigreg_real(h.reshape(-1, h.shape[-1]), rng)
      total = total + self.sigreg_weight * reg * self.weight(batch)
      metrics["sigreg"] = reg * self.weight(batch)
    return total, metrics

"""Direct Preference Optimization (Rafailov et al., 2023) as a loop objective.

For a prompt x with a chosen response y_c and a rejected one y_r, with π the policy and π_ref the
frozen initial policy:

    h    = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))
    loss = −log σ(β·h)

log π(y|x) sums the next-token log-probabilities over the response tokens (and EOS), i.e. over the
positions `*_loss_mask` marks. The implicit reward of a response is β·(log π − log π_ref).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from modernlm_jax.model import LanguageModel, ModelConfig, output_embedding
from modernlm_jax.train.fused_ce import cross_entropy_terms


def response_logps(params, model_cfg: ModelConfig, batch: dict, loss_chunk: int = 0):
  """Σ over masked positions of log p(target | prefix), per row: float32 [B]."""
  h = LanguageModel(model_cfg).apply(
    {"params": params},
    batch["inputs"],
    positions=batch.get("positions"),
    segment_ids=batch.get("segment_ids"),
    return_hidden=True,
  )
  lse, target_logit = cross_entropy_terms(h, output_embedding(params, model_cfg), batch["targets"], loss_chunk)
  return jnp.sum((target_logit - lse) * batch["loss_mask"].astype(jnp.float32), axis=-1)


def dpo_terms(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> dict[str, jax.Array]:
  """Per-pair DPO loss and diagnostics from summed response log-probs (all [B])."""
  chosen_logratio = policy_chosen - ref_chosen
  rejected_logratio = policy_rejected - ref_rejected
  chosen_reward, rejected_reward = beta * chosen_logratio, beta * rejected_logratio
  margin = chosen_reward - rejected_reward
  return {
    "loss": -jax.nn.log_sigmoid(margin),
    # A tie (policy == reference, as at the start) is a coin flip, not a miss.
    "reward_accuracy": jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0)),
    "reward_margin": margin,
    "chosen_reward": chosen_reward,
    "rejected_reward": rejected_reward,
    "logratio": 0.5 * (chosen_logratio + rejected_logratio),  # how far the policy drifted from the reference
    "chosen_logp": policy_chosen,
    "rejected_logp": policy_rejected,
  }


def side(batch: dict, name: str) -> dict:
  """The five standard keys of one side (`chosen_*` or `rejected_*`) of a DPO batch."""
  prefix = name + "_"
  return {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}


def real_pairs(batch: dict) -> jax.Array:
  """1.0 for rows holding a pair, 0.0 for padding rows (all-zero masks): float32 [B]."""
  return (jnp.sum(batch["chosen_loss_mask"], axis=-1) > 0).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class DPOObjective:
  """DPO over `chosen_*`/`rejected_*` batches; `ref_params` is the frozen reference policy."""

  model_cfg: ModelConfig
  beta: float = 0.1
  loss_chunk: int = 0
  name: str = "dpo"
  batch_kind = "pairs"
  needs_reference = True
  reports_perplexity = False  # a per-pair preference loss: the loop reports no val_ppl for it

  def weight(self, batch) -> jax.Array:
    return jnp.sum(real_pairs(batch))

  def _both_logps(self, params, batch):
    # One forward over chosen and rejected rows stacked: the same work, half the kernel launches.
    c, r = side(batch, "chosen"), side(batch, "rejected")
    both = {k: jnp.concatenate([c[k], r[k]], axis=0) for k in c}
    logps = response_logps(params, self.model_cfg, both, self.loss_chunk)
    n = c["inputs"].shape[0]
    return logps[:n], logps[n:]

  def loss_sums(self, params, batch, rng, ref_params=None) -> tuple[jax.Array, dict[str, Any]]:
    del rng
    if ref_params is None:
      raise ValueError(
        f"{self.name} needs the frozen reference policy as ref_params (the loop keeps one for "
        "every objective with needs_reference=True)"
      )
    policy_c, policy_r = self._both_logps(params, batch)
    ref_c, ref_r = jax.lax.stop_gradient(self._both_logps(ref_params, batch))
    terms = dpo_terms(policy_c, policy_r, ref_c, ref_r, self.beta)
    real = real_pairs(batch)
    sums = {k: jnp.sum(v * real) for k, v in terms.items()}
    return sums["loss"], sums

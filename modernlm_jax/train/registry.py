"""Objectives by name: `config.objective` picks one, and the loop asks it everything stage-specific.

A new objective (ORPO, KTO, SimPO, ...) is a file with its class (see `objectives.Objective`) and one line in
`OBJECTIVES`, or a `register_objective` call from the module that defines it.
"""

from __future__ import annotations

from typing import Callable

from modernlm_jax.model import ModelConfig
from modernlm_jax.train.dpo import DPOObjective
from modernlm_jax.train.objectives import NextTokenObjective, Objective

Builder = Callable[[object, ModelConfig], Objective]  # (run config, model config) -> objective


def _next_token(config, model_cfg: ModelConfig, name: str = "next_token") -> Objective:
  t = config.train
  # SFT always isolates examples; pretraining follows data.isolate_documents.
  use_segments = name == "sft" or bool(config.get("data", {}).get("isolate_documents", True))
  return NextTokenObjective(
    model_cfg,
    z_loss=float(t.z_loss),
    sigreg_weight=float(t.sigreg_weight),
    loss_chunk=int(t.loss_chunk),
    name=name,
    use_segment_ids=use_segments,
  )


def _dpo(config, model_cfg: ModelConfig) -> Objective:
  return DPOObjective(model_cfg, beta=float(config.dpo.beta), loss_chunk=int(config.train.loss_chunk))


OBJECTIVES: dict[str, Builder] = {
  "next_token": _next_token,
  "sft": lambda config, model_cfg: _next_token(config, model_cfg, "sft"),
  "dpo": _dpo,
}


def register_objective(name: str, builder: Builder) -> None:
  """Adds (or replaces) an objective; `config.objective=name` then selects it in every stage."""
  OBJECTIVES[name] = builder


def objective_names() -> list[str]:
  return sorted(OBJECTIVES)


def make_objective(config) -> Objective:
  kind = str(config.get("objective", "next_token"))
  if kind not in OBJECTIVES:
    raise ValueError(
      f"objective={kind!r} is not valid; choose one of {objective_names()} "
      "(or register one with modernlm_jax.train.registry.register_objective)"
    )
  return OBJECTIVES[kind](config, ModelConfig.from_dict(config.model))

"""Pretraining. `--config=configs/pretrain.py` trains a tiny modern model on the embedded corpus in
minutes on a laptop CPU; `:<family>-<scale>` (e.g. `:modern-8m`, `:gpt2-125m`) picks a preset."""

from modernlm_jax.config_base import apply_stage_size, base_config


def get_config(arg: str | None = None):
  preset = arg or "modern-tiny"
  c = base_config(preset)
  c.task = "pretrain"
  apply_stage_size(c, "pretrain", preset)
  return c

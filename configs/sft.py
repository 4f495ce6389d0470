"""Supervised fine-tuning on Alpaca-format data, started from a pretraining run.

    python -m modernlm_jax.main --config=configs/sft.py --config.init_from=runs/pretrain --workdir=runs/sft

`:<family>-<scale>` picks the same presets as configs/pretrain.py (it must match the run in
init_from). The loss is next-token cross-entropy over response tokens only; eval is the same loss on
a held-out ~5 % of the records. Data: --config.data.source=jsonl:PATH (Alpaca JSON array, or JSONL
of alpaca / prompt_response / chat records; see modernlm_jax/data/formats.py).
"""

from modernlm_jax.config_base import apply_stage_size, base_config
from modernlm_jax.data.posttrain_pipeline import default_posttrain_data_config


def get_config(arg: str | None = None):
  preset = arg or "modern-tiny"
  c = base_config(preset)
  c.task = "sft"
  c.objective = "sft"
  c.data = default_posttrain_data_config("sft")
  c.sample.prompt = "Give three tips for staying healthy."  # an instruction: formatted with the Alpaca template
  c.sample.max_new_tokens = 64
  apply_stage_size(c, "sft", preset)
  return c

"""Supervised fine-tuning on Alpaca-format data, started from a pretraining run.

    python -m modernlm_jax.main --config=configs/sft.py --config.init_from=runs/pretrain --workdir=runs/sft

`:<family>-<scale>` picks the same presets as configs/pretrain.py (it must match the run in
init_from). The loss is next-token cross-entropy over response tokens only; eval is the same loss on
a held-out ~5 % of the records. Data: --config.data.source=jsonl:PATH (Alpaca JSON array, or JSONL
of alpaca / prompt_response / chat records; see modernlm_jax/data/formats.py).
"""

from modernlm_jax.config_base import base_config
from modernlm_jax.data.posttrain_pipeline import default_posttrain_data_config


def get_config(arg: str | None = None):
  preset = arg or "modern-tiny"
  c = base_config(preset)
  c.task = "sft"
  c.objective = "sft"
  c.data = default_posttrain_data_config("sft")
  c.sample.prompt = "Give three tips for staying healthy."  # an instruction: formatted with the Alpaca template
  c.sample.max_new_tokens = 64
  if preset.endswith("-tiny"):
    # Sized for a few minutes on 2 CPU cores with a clearly falling response loss.
    c.data.seq_len = 256
    c.train.update(dict(steps=60, batch_size=8, lr=1e-3, warmup_steps=6, eval_every=20, eval_batches=4,
                        checkpoint_every=60, log_every=10))
  else:
    c.data.seq_len = min(1024, c.model.max_len)
    large = "125m" in preset or "253m" in preset
    c.train.update(dict(steps=2000, batch_size=32, lr=3e-5 if large else 1e-4, warmup_steps=100, eval_every=250,
                        eval_batches=8, checkpoint_every=500, log_every=25))
  return c

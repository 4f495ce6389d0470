"""Direct Preference Optimization on HH-RLHF pairs, started from an SFT (or pretraining) run.

    python -m modernlm_jax.main --config=configs/dpo.py --config.init_from=runs/sft --workdir=runs/dpo

`:<family>-<scale>` picks the same presets as configs/pretrain.py (it must match the run in
init_from). The reference policy is the frozen init_from model; --config.dpo.beta sets β (0.1).
Data: --config.data.source=jsonl:PATH (HH-RLHF chosen/rejected transcripts or prompt/chosen/rejected
JSONL; see modernlm_jax/data/formats.py).
"""

from modernlm_jax.config_base import base_config
from modernlm_jax.data.posttrain_pipeline import default_posttrain_data_config


def get_config(arg: str | None = None):
  preset = arg or "modern-tiny"
  c = base_config(preset)
  c.task = "dpo"
  c.objective = "dpo"
  c.dpo.beta = 0.1
  c.data = default_posttrain_data_config("dpo")
  c.data.pack_sft = False  # pairs are never packed
  if preset.endswith("-tiny"):
    c.data.seq_len = 256
    c.train.update(dict(steps=40, batch_size=8, lr=2e-4, warmup_steps=4, eval_every=20, eval_batches=4,
                        checkpoint_every=40, log_every=10, weight_decay=0.0))
  else:
    c.data.seq_len = min(1024, c.model.max_len)
    large = "125m" in preset or "253m" in preset
    c.train.update(dict(steps=1000, batch_size=32, lr=5e-7 if large else 5e-6, warmup_steps=50, eval_every=200,
                        eval_batches=8, checkpoint_every=250, log_every=25, weight_decay=0.0))
  return c

"""Direct Preference Optimization on HH-RLHF pairs, started from an SFT (or pretraining) run.

    python -m modernlm_jax.main --config=configs/dpo.py --config.init_from=runs/sft --workdir=runs/dpo

`:<family>-<scale>` picks the same presets as configs/pretrain.py (it must match the run in
init_from). The reference policy is the frozen init_from model; --config.dpo.beta sets β (0.1).
Data: --config.data.source=jsonl:PATH (HH-RLHF chosen/rejected transcripts or prompt/chosen/rejected
JSONL; see modernlm_jax/data/formats.py).
"""

from modernlm_jax.config_base import apply_stage_size, base_config
from modernlm_jax.data.posttrain_pipeline import default_posttrain_data_config


def get_config(arg: str | None = None):
  preset = arg or "modern-tiny"
  c = base_config(preset)
  c.task = "dpo"
  c.objective = "dpo"
  c.dpo.beta = 0.1
  c.data = default_posttrain_data_config("dpo")
  c.data.pack_sft = False  # pairs are never packed
  apply_stage_size(c, "dpo", preset)
  return c

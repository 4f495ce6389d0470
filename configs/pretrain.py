"""Pretraining. `--config=configs/pretrain.py` trains a tiny modern model on the embedded corpus in
minutes on a laptop CPU; `:<family>-<scale>` (e.g. `:modern-8m`, `:gpt2-125m`) picks a preset."""

from modernlm_jax.config_base import base_config


def get_config(arg: str | None = None):
  preset = arg or "modern-tiny"
  c = base_config(preset)
  c.task = "pretrain"
  if preset.endswith("-tiny"):
    # Sized to finish in under 3 minutes on 2 CPU cores with a clearly falling validation loss.
    c.data.seq_len = 128
    c.train.update(dict(steps=300, batch_size=16, lr=3e-3, warmup_steps=30, eval_every=100, eval_batches=16,
                        checkpoint_every=100, log_every=25))
  else:
    c.data.seq_len = min(1024, c.model.max_len)
    c.train.update(dict(steps=10_000, batch_size=64, lr=6e-4 if "125m" in preset or "253m" in preset else 1e-3,
                        warmup_steps=500, eval_every=500, checkpoint_every=1000, log_every=50))
  return c

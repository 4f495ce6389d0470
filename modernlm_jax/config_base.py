"""The base ConfigDict every task config starts from, and the preset logic for `--config=...:<preset>`.

Configs are locked: a typo in `--config.a.b=value` is an error listing the valid keys.
"""

from __future__ import annotations

import ml_collections

from modernlm_jax.model import ModelConfig, scales


def train_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      steps=1000,
      batch_size=32,  # global rows per optimizer step
      accum_steps=1,  # micro-batches per step (batch_size must divide by it)
      lr=3e-4,
      min_lr_ratio=0.1,
      warmup_steps=100,
      schedule="cosine",  # cosine | constant
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,
      decay_embeddings=False,
      grad_clip=1.0,
      z_loss=0.0,
      sigreg_weight=0.0,  # SIGReg embedding regulariser (real part of the characteristic function); 0 = off
      loss_chunk=8192,  # tokens per chunk of the fused vocabulary projection + loss (bounds logits memory); 0 = one chunk
      skip_nonfinite=False,  # True: skip a non-finite step and count it; False: stop the run
      log_every=10,
      eval_every=200,
      eval_batches=8,
      checkpoint_every=200,
      keep_checkpoints=3,
      checkpoint_minutes=0.0,  # > 0: also save when this much wall time passed since the last save (preemptible VMs)
      allow_schedule_change=False,  # True: resume with changed lr/steps/optimizer settings (recorded in metrics)
      async_checkpoint=True,
      tensorboard=True,
      profile_steps=0,  # >0: write a jax.profiler trace of that many steps after warm-up
      compilation_cache_dir="auto",  # per-host persistent JAX compilation cache; auto = ~/.cache/modernlm_jax/...; '' = off
      optimizer="adamw",  # adamw | muon (optax.contrib.muon for hidden matrices, AdamW for the rest)
      muon_lr=0.02,  # Muon's peak rate (the schedule's shape follows train.lr's)
      muon_beta=0.95,
      trackers="tensorboard",  # comma-separated: tensorboard, wandb, trackio (metrics.jsonl is always written)
    )
  )


def model_config_dict(cfg: ModelConfig) -> ml_collections.ConfigDict:
  d = cfg.to_dict()
  d["layer_pattern"] = ",".join(cfg.layer_pattern)  # a string, so --config.model.layer_pattern=... works
  return ml_collections.ConfigDict(d)


def base_config(preset: str = "modern-tiny") -> ml_collections.ConfigDict:
  from modernlm_jax.data.pipeline import default_data_config
  from modernlm_jax.data.tokenizers import default_tokenizer_config

  c = ml_collections.ConfigDict()
  c.task = "pretrain"
  c.objective = "next_token"
  c.seed = 42
  c.preset = preset
  c.model = model_config_dict(scales.preset(preset))
  c.tokenizer = default_tokenizer_config()
  c.data = default_data_config()
  c.train = train_defaults()
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.init_from = ""  # run directory or checkpoint step directory to start from (SFT, DPO, fine-tuning)
  c.sample = ml_collections.ConfigDict(dict(prompt="The", max_new_tokens=48, temperature=0.8, top_k=40, top_p=1.0))
  c.dpo = ml_collections.ConfigDict(dict(beta=0.1))
  apply_preset_tokenizer(c, preset)
  return c


def apply_preset_tokenizer(c: ml_collections.ConfigDict, preset: str) -> None:
  """Small scales train an SentencePiece vocabulary of the model's size; 125M+ use GPT-2 BPE."""
  scale = preset.partition("-")[2]
  kind = scales.preset_tokenizer(scale)
  c.tokenizer.kind = kind
  if kind == "sentencepiece":
    c.tokenizer.vocab_size = c.model.vocab_size


# Per stage, the step budget and schedule of each preset size, in one table: "tiny" sizes the development
# presets to finish in minutes on 2 CPU cores with a clearly falling loss; "full" is every real scale, with
# `lr` for 3.5M-30M and `large_lr` for 125M/253M.
STAGE_SIZES = {
  "pretrain": dict(
    tiny=dict(
      seq_len=128,
      train=dict(
        steps=300,
        batch_size=16,
        lr=3e-3,
        warmup_steps=30,
        eval_every=100,
        eval_batches=16,
        checkpoint_every=100,
        log_every=25,
      ),
    ),
    full=dict(
      train=dict(steps=10_000, batch_size=64, warmup_steps=500, eval_every=500, checkpoint_every=1000, log_every=50),
      lr=1e-3,
      large_lr=6e-4,
    ),
  ),
  "sft": dict(
    tiny=dict(
      seq_len=256,
      train=dict(
        steps=60,
        batch_size=8,
        lr=1e-3,
        warmup_steps=6,
        eval_every=20,
        eval_batches=4,
        checkpoint_every=60,
        log_every=10,
      ),
    ),
    full=dict(
      train=dict(
        steps=2000, batch_size=32, warmup_steps=100, eval_every=250, eval_batches=8, checkpoint_every=500, log_every=25
      ),
      lr=1e-4,
      large_lr=3e-5,
    ),
  ),
  "dpo": dict(
    tiny=dict(
      seq_len=256,
      train=dict(
        steps=40,
        batch_size=8,
        lr=2e-4,
        warmup_steps=4,
        eval_every=20,
        eval_batches=4,
        checkpoint_every=40,
        log_every=10,
        weight_decay=0.0,
      ),
    ),
    full=dict(
      train=dict(
        steps=1000,
        batch_size=32,
        warmup_steps=50,
        eval_every=200,
        eval_batches=8,
        checkpoint_every=250,
        log_every=25,
        weight_decay=0.0,
      ),
      lr=5e-6,
      large_lr=5e-7,
    ),
  ),
}


def apply_stage_size(c: ml_collections.ConfigDict, stage: str, preset: str) -> None:
  """Sequence length and train budget of `stage` for `preset` from STAGE_SIZES."""
  sizes = STAGE_SIZES[stage]
  if preset.endswith("-tiny"):
    c.data.seq_len = sizes["tiny"]["seq_len"]
    c.train.update(sizes["tiny"]["train"])
    return
  c.data.seq_len = min(1024, c.model.max_len)
  large = "125m" in preset or "253m" in preset
  c.train.update(dict(sizes["full"]["train"], lr=sizes["full"]["large_lr" if large else "lr"]))

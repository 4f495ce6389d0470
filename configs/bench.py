"""Training-step benchmark: `--config=configs/bench.py:<preset>` (default `gpt2-125m`, the throughput target).

Auto settings (0, or -1 for warmup) follow the backend: 16 × 1024 tokens, 20 timed steps after 3 warm-up
steps on GPU/TPU; 4 × 128, 5 after 1 on CPU. The fast path is the default: bf16 compute (float32 master
weights), the fastest attention kernel the options allow (cuDNN flash on GPU, splash on TPU, logged with
the reason when it falls back), the vocabulary projection + cross-entropy fused with its gradient in 4096-token chunks
(`train/fused_ce.py`). The
bench.* knobs below override model.dtype / attention_impl / remat and train.loss_chunk.
"""

import ml_collections

from modernlm_jax.config_base import base_config


def bench_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      steps=0,  # timed steps; 0 = auto (20 on GPU/TPU, 5 on CPU)
      warmup=-1,  # untimed steps after compilation (at least 1); -1 = auto (3 / 1)
      synthetic=True,  # False: batches from config.data (tokenizer built or reloaded in the workdir)
      batch_size=0,  # global rows; 0 = auto (16 / 4)
      seq_len=0,  # 0 = auto (min(1024, model.max_len) / 128)
      dtype="bfloat16",  # compute dtype; parameters and optimizer state stay float32
      attention_impl="auto",  # auto | cudnn | splash | xla | reference
      loss_chunk=4096,  # tokens (of the flattened batch) per chunk of the fused vocabulary projection + loss; 0 = one chunk
      remat="none",  # none | full | dots | dots_no_batch
      profile_steps=0,  # >0: trace that many more steps to <workdir>/profile and print the top operations
      top_ops=20,
    )
  )


def get_config(arg: str | None = None):
  preset = arg or "gpt2-125m"
  c = base_config(preset)
  c.task = "bench"
  c.bench = bench_defaults()
  c.train.update(dict(warmup_steps=10, tensorboard=False))
  return c

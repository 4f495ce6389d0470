"""A tiny real-pipeline training run the kill tests start as a subprocess and SIGKILL.

    python tests/kill_worker.py WORKDIR CORPUS [--steps N] [--block-save-at STEP]

Prints `STEP <n> <loss repr>` after every step (flushed), so the parent can kill at an exact step
and compare losses bit for bit. `--block-save-at STEP` stalls the asynchronous save of STEP just
before orbax commits it (its temporary directory is written, the rename has not happened), prints
`SAVE_BLOCKED <STEP>` and keeps the writer blocked: the parent kills the process in that window.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path: Path) -> Path:
  """120 small paragraphs of random words: enough blocks for a few steps and a held-out document."""
  r = random.Random(0)
  words = "alpha beta gamma delta river stone light cloud green quiet north story".split()
  paragraphs = [
    "\n".join(" ".join(r.choice(words) for _ in range(r.randint(5, 15))) for _ in range(3)) for _ in range(120)
  ]
  path.write_text("\n\n".join(paragraphs))
  return path


def worker_config(corpus: str, cache_dir: str, steps: int):
  """configs/pretrain.py shrunk to seconds: a 2-layer model, byte tokenizer, 4×32-token batches."""
  spec = importlib.util.spec_from_file_location("pretrain_config", ROOT / "configs" / "pretrain.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("modern-tiny")
  c.model.update(dict(vocab_size=320, max_len=32, n_layers=2, d_model=32, n_heads=4, d_ff=64))
  c.tokenizer.kind = "bytes"
  c.data.update(dict(source=f"text:{corpus}", seq_len=32, cache_dir=cache_dir, val_tokens=256))
  c.train.update(
    dict(
      steps=steps,
      batch_size=4,
      warmup_steps=2,
      lr=3e-3,
      log_every=1,
      eval_every=1000,
      eval_batches=1,
      checkpoint_every=2,
      keep_checkpoints=20,
      async_checkpoint=True,
      tensorboard=False,
    )
  )
  c.mesh.update(dict(data=1, fsdp=1, tensor=1))
  return c


def block_commit_of(step: int) -> None:
  """Stalls orbax's final rename of checkpoint `step` forever (the process is killed meanwhile)."""
  from orbax.checkpoint._src.path import atomicity

  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self._final_path.name == str(step):
      print(f"SAVE_BLOCKED {step} {self.get()}", flush=True)
      threading.Event().wait()
    return await original(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("corpus")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--block-save-at", type=int, default=0)
  parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep after each step (signal tests)")
  parser.add_argument("--params-out", default="", help="write the final parameters here (.npz)")
  args = parser.parse_args()

  # One CPU device, whatever the parent's pytest setup forces: every run must compile the same program.
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(ROOT))
  import jax

  if os.environ.get("KILL_WORKER_JAX_CACHE"):
    # The runs of one test compile identical programs: a shared persistent cache keeps the suite fast.
    jax.config.update("jax_compilation_cache_dir", os.environ["KILL_WORKER_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from modernlm_jax.jobs.pretrain import pretrain_stage
  from modernlm_jax.train.loop import train

  if args.block_save_at:
    block_commit_of(args.block_save_at)
  config = worker_config(args.corpus, str(Path(args.workdir) / "token_cache"), args.steps)
  stage = pretrain_stage(config, args.workdir)

  def on_step(m):
    print(f"STEP {m['step']} {m['loss']!r}", flush=True)
    time.sleep(args.step_delay)

  final = train(config, args.workdir, stage, on_step=on_step)
  if args.params_out:
    import numpy as np

    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(final["params"]))
    np.savez(args.params_out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
  print("DONE", flush=True)


if __name__ == "__main__":
  main()

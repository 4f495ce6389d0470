"""One process of the multi-process data-parallel test (tests/test_multiprocess.py starts it).

Runs the real training loop on a tiny model with synthetic batches and prints one line
`RESULT {"losses": [...], ...}`. With JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
set, it joins the others through `modernlm_jax.main.maybe_initialize_distributed` (the same code a
multi-host launch runs) and feeds only its own rows of every global batch; without them it is the
single-process reference. The device count comes from XLA_FLAGS, which the parent sets.

    python tests/multiprocess_worker.py --workdir DIR --steps 4 [--stop-at 2] [--checkpoint-every 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

# Runs as a script, so the tests folder (train_utils) and the repo root (the package) go on the path.
_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS), str(_TESTS.parent)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Cross-process collectives on CPU need an implementation; gloo is the default on recent JAX, but
# older releases defaulted to none, which fails only at the first all-reduce.
jax.config.update("jax_cpu_collectives_implementation", "gloo")

from modernlm_jax.main import maybe_initialize_distributed  # noqa: E402

MESHES = {"data": (-1, 1, 1), "fsdp": (1, -1, 1)}


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--stop-at", type=int, default=0, help="end this invocation at this step (0 = run to --steps)")
  p.add_argument("--checkpoint-every", type=int, default=10_000)
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--async-checkpoint", action="store_true")
  p.add_argument("--sigterm-at", type=int, default=0, help="process 0 sends itself SIGTERM after this step")
  p.add_argument("--preemption-check-every", type=int, default=0, help="steps between the processes' signal checks")
  p.add_argument(
    "--mesh",
    choices=sorted(MESHES),
    default="data",
    help="data: replicated parameters; fsdp: parameters sharded across the processes",
  )
  args = p.parse_args(argv)

  maybe_initialize_distributed()

  from train_utils import FakeTokenizer, tiny_config  # after initialize: it imports the package's JAX users

  from modernlm_jax.train.loop import StageData, train
  from modernlm_jax.train.synthetic import SyntheticBatches

  config = tiny_config(
    "modern",
    steps=args.steps,
    batch_size=args.batch_size,
    seq_len=16,
    mesh=MESHES[args.mesh],
    checkpoint_every=args.checkpoint_every,
    async_checkpoint=args.async_checkpoint,
  )
  pi, pc = jax.process_index(), jax.process_count()
  common = dict(batch_size=config.train.batch_size, seq_len=config.data.seq_len, vocab_size=config.model.vocab_size)
  train_iter = SyntheticBatches(**common, seed=0, process_index=pi, process_count=pc)
  # Eval batches are global host batches: the loop itself keeps this process's rows.
  evals = [SyntheticBatches(**common, seed=999).batch_at(i) for i in range(2)]
  stage = StageData(train_iter=train_iter, eval_batches=evals, tokenizer=FakeTokenizer())

  from modernlm_jax.train import preemption

  if args.preemption_check_every:
    preemption.MULTIHOST_CHECK_EVERY = args.preemption_check_every
  losses: dict[int, float] = {}

  def on_step(m):
    losses[int(m["step"])] = float(m["loss"])
    if pi == 0 and int(m["step"]) == args.sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)

  exit_code, final = 0, {}
  try:
    final = train(config, args.workdir, stage, on_step=on_step, stop_at=args.stop_at or None)
  except preemption.Preempted as e:
    exit_code, final = e.code, {"preempted_at": e.step}
  result = {
    "process_index": pi,
    "process_count": pc,
    "local_devices": jax.local_device_count(),
    "global_devices": jax.device_count(),
    "steps": sorted(losses),
    "losses": [losses[s] for s in sorted(losses)],
    "val_loss": final.get("val_loss"),
    "preempted_at": final.get("preempted_at"),
  }
  print("RESULT " + json.dumps(result), flush=True)
  if pc > 1:
    # Leave together: a process exiting while a peer is still in a collective makes the peer hang.
    jax.distributed.shutdown()
  sys.exit(exit_code)


if __name__ == "__main__":
  main()

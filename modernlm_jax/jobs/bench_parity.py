"""Loss parity: the optimised train step against the reference step, on the same batches, step by step.

    python -m modernlm_jax.jobs.bench_parity --config=configs/bench.py:gpt2-125m [--steps=10]

"Optimised" is the bench configuration as given (on a GPU: bf16 compute, cuDNN flash attention, the
fused chunked vocabulary projection + loss). "Reference" is the same model, seed and batches in float32
with the einsum attention kernel, the loss in one chunk and no rematerialisation. Both start from the
same initial parameters, so every step's loss is comparable; the difference after updates shows
whether the fast path trains the same model, not only whether one forward pass agrees. Prints one line
per step and a JSON summary (`max_abs_diff`, `max_rel_diff`).
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from pathlib import Path

import ml_collections
import numpy as np

REFERENCE_KNOBS = dict(dtype="float32", attention_impl="reference", loss_chunk=0, remat="none")


def reference_config(config) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.bench.update(REFERENCE_KNOBS)
  return c


def step_losses(setup, n: int) -> np.ndarray:
  """Losses of the compiled step on the first `n` batches (the first one ran while building)."""
  losses = [float(setup.first_metrics["loss"])]
  state = setup.state
  for _ in range(n - 1):
    batch, _ = next(setup.batches)
    state, metrics = setup.compiled(state, batch)
    losses.append(float(metrics["loss"]))  # a sync per step is fine: only values are compared here
  setup.state = state
  return np.array(losses)


def run(config, workdir: str | Path, steps: int = 10) -> dict:
  from modernlm_jax.jobs import bench

  results = {}
  for name, cfg in (("optimised", config), ("reference", reference_config(config))):
    setup = bench.build(cfg, workdir)
    try:
      with bench.mesh_context(setup.mesh):
        results[name] = (step_losses(setup, steps), setup.model_cfg, setup.kernel)
    finally:
      setup.close()
    del setup
    gc.collect()  # the optimised state leaves the device before the float32 reference is built
  fast, ref = results["optimised"][0], results["reference"][0]
  diff = np.abs(fast - ref)
  print(f"{'step':>4}  {'optimised':>10}  {'reference':>10}  {'|diff|':>8}", flush=True)
  for i, (a, b, d) in enumerate(zip(fast, ref, diff)):
    print(f"{i:>4}  {a:>10.5f}  {b:>10.5f}  {d:>8.5f}", flush=True)
  summary = {
    "preset": str(config.get("preset", "")),
    "steps": int(steps),
    "optimised": {
      "dtype": results["optimised"][1].dtype,
      "kernel": results["optimised"][2][0],
      "loss_chunk": int(config.bench.loss_chunk),
      "losses": fast.tolist(),
    },
    "reference": {"dtype": results["reference"][1].dtype, "kernel": results["reference"][2][0], "losses": ref.tolist()},
    "max_abs_diff": float(diff.max()),
    "max_rel_diff": float((diff / np.abs(ref)).max()),
  }
  print(json.dumps(summary), flush=True)
  return summary


def main(argv: list[str] | None = None) -> dict:
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "configs/bench.py[:preset]", flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", "runs/parity", "run folder", flag_values=fv)
  flags.DEFINE_integer("steps", 10, "train steps compared", flag_values=fv)
  rest = fv(list(argv if argv is not None else sys.argv))
  if len(rest) > 1:
    raise ValueError(f"unexpected arguments {rest[1:]}; settings go in --config.<key>=<value>")
  if fv.config is None:
    raise ValueError("give --config=configs/bench.py[:preset]")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
  return run(fv.config, fv.workdir, fv.steps)


if __name__ == "__main__":
  main()

"""Profile a few train steps: a `jax.profiler` trace under `<workdir>/profile` and the top operations by time.

    python -m modernlm_jax.jobs.profile --config=configs/bench.py:modern-tiny --workdir=runs/prof [--steps=5] [--top=15]
    python -m modernlm_jax.jobs.profile --trace_dir=runs/prof/profile          # summarise an existing trace
    python -m modernlm_jax.main --config=configs/bench.py --config.bench.profile_steps=5   # after a benchmark

It runs the benchmark (same step as the training loop, same JSON line), then traces that many more
steps; `train.profile_steps` does the same inside a training run. This command turns GPU command
buffers off first (`prefer_op_level_trace`); with `bench.profile_steps` in a plain bench or training
run, set XLA_FLAGS=--xla_gpu_enable_command_buffer= yourself or the GPU trace shows
`command_buffer_N` blocks instead of operations. Below the top operations, the same time is summed
by operation family (`custom-call` = cuBLAS matmuls, `dot_product_attention_*` = cuDNN attention,
`*_fusion` = XLA's memory-bound fused kernels). The summary needs no
TensorBoard plugin: jax writes a Chrome-trace `*.trace.json.gz` next to the `.xplane.pb` (and a
`perfetto_trace.json.gz` when asked), whose complete ("X") events on device threads carry the XLA
operation in `args.hlo_op`. Durations of the same operation are summed across steps, threads and
devices; the share is of all operation time, not wall time (the CPU backend runs ops in parallel).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from modernlm_jax.train.trace_summary import (  # noqa: F401
  NO_COMMAND_BUFFERS,
  TRACE_PATTERNS,
  OpTime,
  find_trace_file,
  format_top_ops,
  load_trace_events,
  op_families,
  summarize,
  top_ops,
  trace_steps,
)


def prefer_op_level_trace() -> None:
  """Turns GPU command buffers off for this process (before JAX starts its backend), so the trace names
  operations. Costs about 2 % step time on an H100 (GPT-2 124M: 418k vs 407k tokens/s); the profile
  command's own benchmark line is measured that way and says so in the log."""
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_enable_command_buffer" not in flags_now:
    os.environ["XLA_FLAGS"] = f"{flags_now} {NO_COMMAND_BUFFERS}".strip()


def run(config, workdir: str | Path) -> list[OpTime]:
  """The benchmark (its JSON line included) followed by a trace of `bench.profile_steps` (default 3) steps."""
  from modernlm_jax.jobs import bench

  with config.unlocked():
    config.bench.profile_steps = int(config.bench.profile_steps) or 3
  result = bench.run(config, workdir)
  return [OpTime(**r) for r in result.get("top_ops", [])]


def main(argv: list[str] | None = None) -> list[OpTime]:
  """Command line; flags live in their own FlagValues so this never clashes with `modernlm_jax.main`'s."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "configs/bench.py[:preset]", flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", "runs/profile", "run folder; the trace goes to <workdir>/profile", flag_values=fv)
  flags.DEFINE_integer("steps", 0, "steps to trace (default: bench.profile_steps or 3)", flag_values=fv)
  flags.DEFINE_integer("top", 0, "operations to print (default: bench.top_ops)", flag_values=fv)
  flags.DEFINE_string("trace_dir", None, "only summarise the trace already under this folder", flag_values=fv)
  rest = fv(list(argv if argv is not None else sys.argv))
  if len(rest) > 1:
    raise ValueError(f"unexpected arguments {rest[1:]}; settings go in --config.<key>=<value>")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
  if fv.trace_dir:
    return summarize(fv.trace_dir, fv.top or 20)
  if fv.config is None:
    raise ValueError("give --config=configs/bench.py[:preset] (or --trace_dir=DIR to summarise a trace)")
  prefer_op_level_trace()
  logging.info("profile: XLA_FLAGS=%s (GPU command buffers off so the trace names operations)", os.environ["XLA_FLAGS"])
  config = fv.config
  with config.unlocked():
    if fv.steps:
      config.bench.profile_steps = fv.steps
    if fv.top:
      config.bench.top_ops = fv.top
  return run(config, fv.workdir)


if __name__ == "__main__":
  main()

"""Profile a few train steps: a `jax.profiler` trace under `<workdir>/profile` and the top operations by time.

    python -m modernlm_jax.tasks.profile --config=configs/bench.py:modern-tiny --workdir=runs/prof [--steps=5] [--top=15]
    python -m modernlm_jax.tasks.profile --trace_dir=runs/prof/profile          # summarise an existing trace
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

import dataclasses
import gzip
import json
import logging
import os
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import jax

# On GPU, XLA replays runs of kernels as command buffers (CUDA graphs); a trace then shows one
# `command_buffer_N` event per graph instead of the operations inside it.
NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="
TRACE_PATTERNS = ("*.trace.json.gz", "perfetto_trace.json.gz", "*.trace.json")


@dataclasses.dataclass(frozen=True)
class OpTime:
  name: str
  count: int
  total_ms: float
  share: float  # of the summed time of all operations in the trace


def find_trace_file(trace_dir: str | Path) -> Path:
  """The newest Chrome-trace file jax wrote under `trace_dir` (searches plugins/profile/<run>/)."""
  trace_dir = Path(trace_dir)
  for pattern in TRACE_PATTERNS:
    found = sorted(trace_dir.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if found:
      return found[-1]
  raise FileNotFoundError(f"no trace file ({', '.join(TRACE_PATTERNS)}) under {trace_dir}; run a profile first "
                          "(python -m modernlm_jax.tasks.profile --config=configs/bench.py:<preset>)")


def load_trace_events(path: str | Path) -> list[dict]:
  path = Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt") as f:
    data = json.load(f)
  return data.get("traceEvents", []) if isinstance(data, dict) else list(data)


def _device_pids(events: Iterable[dict]) -> set:
  return {e.get("pid") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
          and str(e.get("args", {}).get("name", "")).startswith("/device:")}


def top_ops(events: list[dict], n: int = 20) -> list[OpTime]:
  """Operations ranked by total duration.

  An operation event is a complete event whose args name an `hlo_op` (CPU thunks, GPU kernels and TPU
  ops all carry it); traces without that annotation fall back to every complete event on a `/device:`
  process, named by the event.
  """
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  ops = [(e["args"]["hlo_op"], float(e["dur"])) for e in complete if isinstance(e.get("args"), dict)
         and e["args"].get("hlo_op")]
  if not ops:
    device = _device_pids(events)
    ops = [(str(e.get("name")), float(e["dur"])) for e in complete if e.get("pid") in device]
  totals: dict[str, float] = defaultdict(float)
  counts: dict[str, int] = defaultdict(int)
  for name, dur_us in ops:
    totals[name] += dur_us
    counts[name] += 1
  grand = sum(totals.values()) or 1.0
  ranked = sorted(totals, key=totals.get, reverse=True)[:n]
  return [OpTime(name, counts[name], totals[name] / 1e3, totals[name] / grand) for name in ranked]


def op_families(rows: list[OpTime]) -> list[OpTime]:
  """The same rows summed by operation family: the name without XLA's `.N` suffix (`custom-call.36` ->
  `custom-call`, `dot_product_attention_bwd.152` -> `dot_product_attention_bwd`), so per-layer copies of
  one operation add up to what a step spends on that kind of work."""
  totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
  for r in rows:
    fam = re.sub(r"\.\d+$", "", r.name)
    totals[fam][0] += r.count
    totals[fam][1] += r.total_ms
    totals[fam][2] += r.share
  ranked = sorted(totals.items(), key=lambda kv: kv[1][1], reverse=True)
  return [OpTime(name, int(c), ms, share) for name, (c, ms, share) in ranked]


def format_top_ops(rows: list[OpTime]) -> str:
  if not rows:
    return "(no device operations found in the trace)"
  width = min(60, max(len(r.name) for r in rows))
  lines = [f"{'operation':<{width}}  {'count':>6}  {'total ms':>10}  {'share':>6}"]
  for r in rows:
    lines.append(f"{r.name[:width]:<{width}}  {r.count:>6d}  {r.total_ms:>10.3f}  {100 * r.share:>5.1f}%")
  return "\n".join(lines)


def prefer_op_level_trace() -> None:
  """Turns GPU command buffers off for this process (before JAX starts its backend), so the trace names
  operations. Costs about 2 % step time on an H100 (GPT-2 124M: 418k vs 407k tokens/s); the profile
  command's own benchmark line is measured that way and says so in the log."""
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_enable_command_buffer" not in flags_now:
    os.environ["XLA_FLAGS"] = f"{flags_now} {NO_COMMAND_BUFFERS}".strip()


def trace_steps(step_fn, state, batches, num_steps: int, trace_dir: str | Path):
  """Runs `num_steps` steps under `jax.profiler.trace`; returns the new state. One sync, at the end."""
  trace_dir = Path(trace_dir)
  trace_dir.mkdir(parents=True, exist_ok=True)
  metrics = None
  with jax.profiler.trace(str(trace_dir)):
    for i in range(num_steps):
      batch, _ = next(batches)
      with jax.profiler.StepTraceAnnotation("train", step_num=i):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
  return state


def summarize(trace_dir: str | Path, top: int = 20) -> list[OpTime]:
  path = find_trace_file(trace_dir)
  every = top_ops(load_trace_events(path), n=10**9)
  rows = every[:top]
  print(f"trace: {path}", flush=True)
  print(format_top_ops(rows), flush=True)
  print("by operation family:", flush=True)
  print(format_top_ops(op_families(every)[:top]), flush=True)
  return rows


def run(config, workdir: str | Path) -> list[OpTime]:
  """The benchmark (its JSON line included) followed by a trace of `bench.profile_steps` (default 3) steps."""
  from modernlm_jax.tasks import bench

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
  logging.info("profile: XLA_FLAGS=%s (GPU command buffers off so the trace names operations)",
               os.environ["XLA_FLAGS"])
  config = fv.config
  with config.unlocked():
    if fv.steps:
      config.bench.profile_steps = fv.steps
    if fv.top:
      config.bench.top_ops = fv.top
  return run(config, fv.workdir)


if __name__ == "__main__":
  main()

"""Read a `jax.profiler` Chrome trace and sum device time by XLA operation and by operation family.

Pure parsing (no model, no jobs), so the training loop can summarise a trace it took.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
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
  raise FileNotFoundError(
    f"no trace file ({', '.join(TRACE_PATTERNS)}) under {trace_dir}; run a profile first "
    "(python -m modernlm_jax.jobs.profile --config=configs/bench.py:<preset>)"
  )


def load_trace_events(path: str | Path) -> list[dict]:
  path = Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt") as f:
    data = json.load(f)
  return data.get("traceEvents", []) if isinstance(data, dict) else list(data)


def _device_pids(events: Iterable[dict]) -> set:
  return {
    e.get("pid")
    for e in events
    if e.get("ph") == "M"
    and e.get("name") == "process_name"
    and str(e.get("args", {}).get("name", "")).startswith("/device:")
  }


def top_ops(events: list[dict], n: int = 20) -> list[OpTime]:
  """Operations ranked by total duration.

  An operation event is a complete event whose args name an `hlo_op` (CPU thunks, GPU kernels and TPU
  ops all carry it); traces without that annotation fall back to every complete event on a `/device:`
  process, named by the event.
  """
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  ops = [
    (e["args"]["hlo_op"], float(e["dur"]))
    for e in complete
    if isinstance(e.get("args"), dict) and e["args"].get("hlo_op")
  ]
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


def summarize(trace_dir: str | Path, top: int = 20) -> list[OpTime]:
  path = find_trace_file(trace_dir)
  every = top_ops(load_trace_events(path), n=10**9)
  rows = every[:top]
  print(f"trace: {path}", flush=True)
  print(format_top_ops(rows), flush=True)
  print("by operation family:", flush=True)
  print(format_top_ops(op_families(every)[:top]), flush=True)
  return rows


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

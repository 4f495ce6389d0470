"""Metric sinks: a JSONL file (what reports are regenerated from), TensorBoard / W&B / Trackio (`trackers.py`),
and a progress line."""

from __future__ import annotations

import json
import time
from pathlib import Path

from modernlm_jax import paths


class MetricWriter:
  """Process 0 writes; on a gs:// workdir both files are written locally and uploaded (paths.LocalMirror):
  object stores cannot append, and tensorboardX writes only local files without extra GCS clients."""

  def __init__(
    self,
    workdir: Path,
    *,
    tensorboard: bool,
    enabled: bool = True,
    trackers: str = "tensorboard",
    config: dict | None = None,
  ):
    from modernlm_jax.train.trackers import open_trackers, parse_trackers

    names = parse_trackers(trackers)
    self.enabled = enabled
    self._mirror = paths.LocalMirror(workdir) if enabled else None
    self.path = paths.path(workdir) / "metrics.jsonl"
    if enabled:
      self._mirror.pull("metrics.jsonl")  # a resumed run appends to the rows already there
    self._file = open(self._mirror.local / "metrics.jsonl", "a") if enabled else None
    self._tb = None
    if enabled and tensorboard and "tensorboard" in names:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(self._mirror.local / "tensorboard"))
      if config is not None:
        self._tb.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", 0)
    self._trackers = open_trackers(names, workdir, config, local_dir=self._mirror.local) if enabled else []

  def write(self, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None and "step" in row:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, row["step"])
      self._tb.flush()
    if self._trackers and "step" in row:
      scalars = {
        k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
      }
      for tracker in self._trackers:
        tracker.log_scalars(int(row["step"]), scalars)
    self._mirror.sync()

  def close(self) -> None:
    if self._file:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._mirror is not None:
      self._mirror.close()


def read_metrics(workdir: str | Path) -> list[dict]:
  path = paths.path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def truncate_metrics(workdir: str | Path, step: int) -> int:
  """Drops the rows after `step` (steps a crashed run did past its last checkpoint, which the resumed run repeats),
  so metrics.jsonl holds each step once. Returns how many rows were dropped."""
  path = paths.path(workdir) / "metrics.jsonl"
  if not path.exists():
    return 0
  lines = path.read_text().splitlines()
  keep = []
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a row cut short by the crash
    if int(row.get("step", 0)) <= step:
      keep.append(line)
  if len(keep) != len(lines):
    paths.write_text_atomic(path, "".join(line + "\n" for line in keep))  # the old file or the new, never half
  return len(lines) - len(keep)


def _fmt_duration(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressLine:
  """`step 120/1000 | loss 3.214 | val 3.402 | 52.1k tok/s | mfu 41.2% | eta 2m10s`."""

  def __init__(self, total_steps: int, start_step: int):
    self.total, self.start = total_steps, start_step
    self.t0 = self.first = None  # the ETA clock starts after the first (compiling) step

  def show(self, m: dict) -> None:
    step = int(m.get("step", 0))
    parts = [f"step {step}/{self.total}"]
    if "loss" in m:
      parts.append(f"loss {m['loss']:.4f}")
    for key, label in (("val_loss", "val"), ("val_reward_accuracy", "val acc"), ("grad_norm", "gnorm")):
      if key in m:
        parts.append(f"{label} {m[key]:.3f}")
    if "tokens_per_s" in m:
      parts.append(f"{m['tokens_per_s'] / 1e3:.1f}k tok/s")
    if "mfu" in m:
      parts.append(f"mfu {m['mfu']:.1%}")
    if self.t0 is None:
      self.t0, self.first = time.perf_counter(), step
    elif step > self.first:
      eta = (time.perf_counter() - self.t0) / (step - self.first) * (self.total - step)
      parts.append(f"eta {_fmt_duration(eta)}")
    print(" | ".join(parts), flush=True)

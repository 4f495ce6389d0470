"""Experiment trackers beside metrics.jsonl: TensorBoard (default), Weights & Biases, Trackio.

`train.trackers` is a comma-separated list (`"tensorboard"`, `"tensorboard,wandb"`, `"trackio"`, `""`). Every
tracker gets the same scalars as metrics.jsonl, the resolved run config once, and the end-of-run sample
(`log_sample`). metrics.jsonl stays the source of truth reports are regenerated from; trackers are views.

  * wandb (`pip install -e '.[wandb]'`): project `$WANDB_PROJECT` (default `modernlm_jax`), run named after the
    workdir, files under `<workdir>/wandb/`. The run id is kept in `<workdir>/wandb_run_id`, so a resumed run
    continues the same W&B run. `WANDB_MODE=offline` logs without an account (`wandb sync` uploads later).
  * trackio (`pip install -e '.[trackio]'`): local-first; project `$TRACKIO_PROJECT` (default `modernlm_jax`), run
    named after the workdir (resumed by name), data under `$TRACKIO_DIR` (default `~/.cache/huggingface/trackio`);
    `trackio show` opens the dashboard.

W&B and Trackio runs stay open after the training loop closes its writer, so the job can add the sample it
generates afterwards; `finish_open_runs()` (or interpreter exit) ends them.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

from modernlm_jax import paths

TRACKERS = ("tensorboard", "wandb", "trackio")
_EXTRA = {"wandb": "wandb", "trackio": "trackio"}


def parse_trackers(spec: Any) -> list[str]:
  """`"tensorboard,wandb"` -> ["tensorboard", "wandb"]; an unknown name is an error listing the valid ones."""
  names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else list(spec or [])) if s.strip()]
  unknown = [n for n in names if n not in TRACKERS]
  if unknown:
    raise ValueError(
      f"train.trackers={spec!r} has unknown tracker(s) {unknown}; choose from {list(TRACKERS)} "
      "(comma-separated, '' for none)"
    )
  return list(dict.fromkeys(names))


def _import(name: str):
  try:
    return __import__(name)
  except ImportError as e:
    raise ImportError(
      f"train.trackers includes {name!r} but the package is not installed: "
      f"pip install -e '.[{_EXTRA[name]}]' (or drop {name!r} from train.trackers)"
    ) from e


class WandbTracker:
  def __init__(self, name: str, local_dir: Path, config: dict | None):
    wandb = _import("wandb")
    id_file = local_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    (local_dir / "wandb").mkdir(parents=True, exist_ok=True)
    self.run = wandb.init(
      project=os.environ.get("WANDB_PROJECT", "modernlm_jax"),
      name=name,
      dir=str(local_dir),
      id=run_id,
      resume="allow",
      config=config or {},
      reinit="create_new",
    )
    id_file.write_text(self.run.id + "\n")
    self.dir = Path(self.run.dir).parent  # <workdir>/wandb/(offline-)run-<time>-<id>

  def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
    self.run.log(scalars, step=step)

  def log_text(self, key: str, text: str, step: int | None) -> None:
    self.run.summary[key] = text

  def finish(self) -> None:
    self.run.finish()


class TrackioTracker:
  def __init__(self, name: str, config: dict | None):
    trackio = _import("trackio")
    self._trackio = trackio
    self.project = os.environ.get("TRACKIO_PROJECT", "modernlm_jax")
    self.run = trackio.init(
      project=self.project,
      name=name,
      config=config or {},
      resume="allow",
      embed=False,
      auto_log_gpu=False,
      auto_log_cpu=False,
    )

  def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
    self.run.log(scalars, step=step)

  def log_text(self, key: str, text: str, step: int | None) -> None:
    self.run.log({key: self._trackio.Markdown(text)}, step=step)

  def finish(self) -> None:
    self.run.finish()


_OPEN: dict[str, list] = {}  # workdir -> W&B / Trackio runs still open (see the module docstring)


def _key(workdir) -> str:
  return str(workdir) if paths.is_remote(workdir) else str(Path(workdir).absolute())


def open_trackers(names: list[str], workdir, config: dict | None, *, local_dir: Path | None = None) -> list:
  """The W&B / Trackio trackers among `names` for `workdir` (TensorBoard is MetricWriter's own). Their files go to
  `local_dir` (the workdir itself, or its local mirror for a gs:// workdir)."""
  finish_open_runs()  # one run per tracker at a time: a new stage ends the previous stage's runs
  name = str(workdir).rstrip("/").rsplit("/", 1)[-1]
  local_dir = Path(local_dir if local_dir is not None else workdir)
  out = []
  for tracker in names:
    if tracker == "wandb":
      out.append(WandbTracker(name, local_dir, config))
    elif tracker == "trackio":
      out.append(TrackioTracker(name, config))
  if out:
    _OPEN[_key(workdir)] = out
  return out


def log_sample(workdir, text: str, step: int | None = None, *, tensorboard: bool = True) -> None:
  """Adds the end-of-run sample to the run's open trackers and to its (local) TensorBoard log, then ends the runs."""
  for tracker in _OPEN.get(_key(workdir), []):
    tracker.log_text("sample", text, step)
  local = Path(str(workdir))
  # A gs:// run's TensorBoard log lives in its (already uploaded) local mirror: the sample goes to the trackers only.
  if tensorboard and not paths.is_remote(workdir) and (local / "tensorboard").is_dir():
    from tensorboardX import SummaryWriter

    tb = SummaryWriter(str(local / "tensorboard"))
    tb.add_text("sample", text, step or 0)
    tb.close()
  finish_open_runs(workdir)


def finish_open_runs(workdir=None) -> None:
  keys = [_key(workdir)] if workdir is not None else list(_OPEN)
  for key in keys:
    for tracker in _OPEN.pop(key, []):
      tracker.finish()


atexit.register(finish_open_runs)

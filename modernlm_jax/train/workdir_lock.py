"""One run per workdir: an exclusive lock file held for the run's whole life.

Two runs on one workdir would interleave their checkpoints and metrics.jsonl. The lock is a file
`<workdir>/run.lock` created with O_EXCL (atomic on local and NFS-style file systems) holding the
holder's host, PID, process start time and wall-clock start. A second run is refused with the
holder named. A lock whose holder no longer runs on this host (no such PID, or the PID now belongs to
a process started later) is stale: it is taken over with a warning. A lock from another host cannot
be checked from here: the refusal says how to remove it once that run is known to be gone.

The lock is re-entrant within one process (the job takes it, `train()` takes it again), and only
process 0 of a multi-host run holds it (the others write no run-level files).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "run.lock"
_held: dict[str, int] = {}  # lock path -> re-entry count in this process


class WorkdirLockedError(RuntimeError):
  pass


def _process_start_ticks(pid: int) -> str | None:
  """The process start time in clock ticks since boot (Linux), which tells a reused PID from its holder."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  return True


def _holder_text(info: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started_unix", 0)))
  return f"PID {info.get('pid')} on host {info.get('host')!r}, started {started}"


def _is_stale(info: dict) -> bool:
  if info.get("host") != socket.gethostname():
    return False
  pid = int(info.get("pid", -1))
  if pid <= 0 or not _alive(pid):
    return True
  ticks = _process_start_ticks(pid)
  return ticks is not None and info.get("start_ticks") not in (None, ticks)


def acquire(workdir: str | Path) -> Path | None:
  """Takes the lock of `workdir` (creating the folder); raises WorkdirLockedError naming a live holder."""
  if str(workdir).startswith("gs://"):
    logging.warning("no workdir lock on %s (object stores have no exclusive create); run one job per workdir", workdir)
    return None
  import jax

  if jax.process_index() != 0:
    return None
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = (workdir / LOCK_NAME).absolute()
  key = str(path)
  if key in _held:
    _held[key] += 1
    return path
  info = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "start_ticks": _process_start_ticks(os.getpid()),
    "started_unix": time.time(),
    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  for _ in range(40):  # a few takeovers of stale locks, or up to ~5 s for a starting holder to write its details
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        holder = json.loads(path.read_text() or "{}")
      except (OSError, ValueError):
        holder = {}
      if not holder and time.time() - path.stat().st_mtime < 5:
        time.sleep(0.2)  # the holder is still writing its details
        continue
      if holder and not _is_stale(holder):
        raise WorkdirLockedError(
          f"{workdir} is in use by another run ({_holder_text(holder)}; lock file {path}). Two runs on one "
          "workdir would mix their checkpoints and metrics: wait for it to finish, stop it, or pass another "
          f"--workdir. If that run is gone (e.g. its host died), delete {path}."
        ) from None
      logging.warning(
        "taking over the stale lock of %s (%s is no longer running)",
        workdir,
        _holder_text(holder) if holder else "an unreadable lock file",
      )
      path.unlink(missing_ok=True)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(info, f)
    _held[key] = 1
    return path
  raise WorkdirLockedError(
    f"could not take the lock {path}: another run seems to be starting in {workdir} (the lock "
    "file stays empty or keeps reappearing); wait for it, or delete the file if no run is there"
  )


def release(path: Path | None) -> None:
  if path is None:
    return
  key = str(path)
  _held[key] -= 1
  if _held[key] == 0:
    del _held[key]
    path.unlink(missing_ok=True)


def holding_workdir(fn):
  """Decorator: `fn(config, workdir, ...)` runs holding the lock of `workdir`."""

  @functools.wraps(fn)
  def wrapper(config, workdir, *args, **kwargs):
    path = acquire(workdir)
    try:
      return fn(config, workdir, *args, **kwargs)
    finally:
      release(path)

  return wrapper

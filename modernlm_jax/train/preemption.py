"""SIGTERM / SIGINT: finish the step, save a checkpoint at it, exit 143 / 130; a second signal exits at once.

Preemptible TPU VMs and cloud GPUs send SIGTERM with a short grace period. The handler only sets a
flag; the loop asks `should_stop(step)` after dispatching each step and, when it says so, saves that
step and raises `Preempted` (a SystemExit carrying 128 + the signal number, the shell's convention).

Multi-host runs must save the same step on every process (an orbax save is a collective: a host saving
alone hangs). So the flag (and the wall-clock save trigger, whose clocks differ per host) is combined
across processes with an all-reduce at fixed steps, every `MULTIHOST_CHECK_EVERY` steps: every process
asks at the same steps and gets the same answer. A single process reads its own flag every step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

import numpy as np

MULTIHOST_CHECK_EVERY = 5  # steps between the collective checks: each one waits for the device queue to drain
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class Preempted(SystemExit):
  """Raised after the checkpoint at `step` is committed; exits the process with 128 + signal number."""

  def __init__(self, step: int, signum: int):
    super().__init__(128 + signum)
    self.step, self.signum = step, signum


def exit_code(signum: int) -> int:
  return 128 + int(signum)


class PreemptionGuard:
  """Owns the SIGTERM/SIGINT handlers for one training run (install on entry, restore on exit)."""

  def __init__(
    self, *, checkpoint_minutes: float = 0.0, process_count: int = 1, exit_now: Callable[[int], None] = os._exit
  ):
    self.signum: int | None = None
    self.checkpoint_seconds = float(checkpoint_minutes) * 60.0
    self.process_count = int(process_count)
    self._exit_now = exit_now
    self._previous: dict[int, object] = {}
    self._last_save = time.monotonic()

  # ----------------------------------------------------------------------------------------------- signals

  def install(self) -> "PreemptionGuard":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("training runs outside the main thread: SIGTERM/SIGINT will not save a checkpoint")
      return self
    for sig in _NAMES:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def uninstall(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.signum is not None:
      # The user (or the scheduler) insists: no checkpoint, exit now. Orbax's atomic saves leave no half checkpoint.
      print(f"second {_NAMES.get(signum, signum)}: exiting at once without saving", flush=True)
      self._exit_now(exit_code(signum))
      return
    self.signum = signum
    print(
      f"received {_NAMES.get(signum, signum)}: finishing this step, saving a checkpoint and exiting "
      "(send it again to exit at once, without saving)",
      flush=True,
    )

  # ------------------------------------------------------------------------------------------- decisions

  def check(self, step: int) -> tuple[bool, bool]:
    """(stop, save) after dispatching `step` (0-based): stop = a signal arrived (on any host); save = the
    wall-clock interval `train.checkpoint_minutes` has passed. Every process gets the same answer."""
    local_stop = self.signum is not None
    local_save = self.checkpoint_seconds > 0 and time.monotonic() - self._last_save >= self.checkpoint_seconds
    if self.process_count <= 1:
      return local_stop, local_save
    if (step + 1) % MULTIHOST_CHECK_EVERY:
      return False, False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([local_stop, local_save], np.int32))
    flags = np.asarray(flags).reshape(-1, 2).max(axis=0)
    if flags[0] and self.signum is None:
      self.signum = int(signal.SIGTERM)  # another host was signalled: exit as it would
    return bool(flags[0]), bool(flags[1])

  def saved(self) -> None:
    self._last_save = time.monotonic()

  def preempted(self, step: int) -> Preempted:
    name = _NAMES.get(self.signum, str(self.signum))
    logging.warning("saved step %d on %s; exiting with code %d", step, name, exit_code(self.signum))
    print(f"saved step {step} on {name}", flush=True)
    return Preempted(step, int(self.signum))

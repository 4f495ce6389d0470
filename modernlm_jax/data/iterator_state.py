"""The data-iterator state a checkpoint stores, and the check that it belongs to this data pipeline."""

from __future__ import annotations

from typing import Any

STATE_VERSION = 1


def make_state(step: int, fingerprint: dict[str, Any]) -> dict[str, Any]:
  return {"version": STATE_VERSION, "step": step, **fingerprint}


def restored_step(state: dict[str, Any], fingerprint: dict[str, Any], advice: str) -> int:
  """The step to resume at; a clear error when the state is from another version or another pipeline
  (`fingerprint` holds what must match: seed, batch size, data identity). `advice` names the fix."""
  if state.get("version") != STATE_VERSION:
    raise ValueError(f"data iterator state version {state.get('version')} is not {STATE_VERSION}")
  changed = {k: (state.get(k), v) for k, v in fingerprint.items() if state.get(k) != v}
  if changed:
    raise ValueError(
      f"the saved data iterator state does not match this data pipeline (saved, now): {changed}; {advice}"
    )
  return int(state["step"])

"""The COMMAND file: the command line and commit that produced a workdir, so every number traces back to its run.

A comparison writes it when it starts; a resumed run appends a `resumed` line instead of replacing it, so a
folder that took three sessions says so. `compare.publish` copies it next to results.json.
"""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
import sys
from pathlib import Path

COMMAND_NAME = "COMMAND"


def command_line(argv: list[str] | None = None) -> str:
  """The invocation as a user would retype it (`python -m modernlm_jax.main ...` for the package entry point)."""
  argv = list(sys.argv if argv is None else argv)
  head = "python -m modernlm_jax.main" if argv and argv[0].endswith(("modernlm_jax/main.py", "-m")) else "python"
  if head == "python" and argv:
    head = "python " + shlex.quote(argv[0])
  return " ".join([head, *map(shlex.quote, argv[1:])])


def code_commit() -> str:
  """`<sha>`, `<sha> (uncommitted changes)` or why it is unknown; never raises."""
  root = Path(__file__).resolve().parents[1]  # the checkout holding modernlm_jax/
  try:
    sha = subprocess.run(
      ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown (the code is not a git checkout)"
  return f"{sha} (uncommitted changes)" if dirty else sha


def record_command(workdir, argv: list[str] | None = None, note: str = "") -> None:
  """Writes `workdir/COMMAND` (a fresh run) or appends a `resumed` line to it (a resumed one), ending with
  `(note)` when given (e.g. what a rerun changed)."""
  now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
  path = workdir / COMMAND_NAME
  if path.exists():
    text = path.read_text()
    tail = f" ({note})" if note else ""
    path.write_text(text.rstrip("\n") + f"\nresumed {now} at commit {code_commit()}: {command_line(argv)}{tail}\n")
    return
  path.write_text(f"{command_line(argv)}\ncommit {code_commit()}\nstarted {now}\n")

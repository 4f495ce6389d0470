"""Publish a finished comparison workdir as a committed results folder.

`python -m modernlm_jax.compare.publish runs/compare-cpu-floor results/cpu-floor` copies results.json and the
COMMAND file (the command line, commit and start time the comparison job recorded in its workdir) into the
folder, then regenerates report.md and the PNG figures from results.json alone, so the folder holds exactly what
`tests/test_committed_results.py` can rebuild byte for byte. Checkpoints and logs stay in the workdir.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

from modernlm_jax.compare import report as report_lib
from modernlm_jax.compare import results as results_lib
from modernlm_jax.provenance import COMMAND_NAME


def publish(workdir: Path, out: Path) -> Path:
  """Copies results.json + COMMAND from `workdir` into `out` and writes the report there; returns report.md."""
  src, command = workdir / "results.json", workdir / COMMAND_NAME
  for need in (src, command):
    if not need.is_file():
      raise FileNotFoundError(
        f"{need} does not exist: publish a workdir the comparison job wrote (it records {COMMAND_NAME} at start)"
      )
  results = results_lib.load(src)  # strict: an invalid results.json is refused before anything is written
  out.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src, out / "results.json")
  shutil.copyfile(command, out / COMMAND_NAME)
  return report_lib.write_report(results, out)


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("workdir", type=Path, help="a comparison workdir holding results.json and COMMAND")
  ap.add_argument("out", type=Path, help="the results/<name> folder to write")
  args = ap.parse_args(argv)
  print(f"published {publish(args.workdir, args.out)}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

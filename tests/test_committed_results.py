"""Every committed results/<name>/ folder rebuilds byte for byte from its results.json, and README's results block
is exactly what those results.json files produce (no claim in README beyond what results.json supports)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modernlm_jax.compare import headline, report
from modernlm_jax.compare import results as results_lib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = sorted(p.parent for p in (ROOT / "results").glob("*/results.json"))


def test_results_are_committed():
  assert FOLDERS, "results/ holds no published comparison (python -m modernlm_jax.compare.publish WORKDIR OUT)"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_folder_regenerates_byte_identically(folder, tmp_path):
  results = results_lib.load(folder / "results.json")
  rebuilt = report.write_report(results, tmp_path)
  assert rebuilt.read_bytes() == (folder / "report.md").read_bytes(), (
    f"{folder}/report.md is stale: python -m modernlm_jax.compare.publish <workdir> {folder}, or rewrite it with "
    "compare.report.write_report from its results.json"
  )
  assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in folder.glob("*.png"))
  command = (folder / "COMMAND").read_text().splitlines()
  assert command[0].startswith("python -m modernlm_jax.main --config=configs/compare.py:")
  assert command[1].startswith("commit ") and len(command[1].split()[1]) == 40


def test_readme_block_matches_results():
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  assert headline.BEGIN in text, "README has no generated results block"
  block = headline.BEGIN + text.split(headline.BEGIN, 1)[1].split(headline.END, 1)[0] + headline.END
  # The README orders its folders (main comparison first); every committed folder must be in it, once.
  listed = [Path(m) for m in re.findall(r"^### \[[^\]]+\]\((.+)/report\.md\)$", block, flags=re.M)]
  rel = [f.relative_to(ROOT) for f in FOLDERS]
  assert sorted(listed) == sorted(rel), f"README lists {listed}, results/ holds {rel}"
  assert block + "\n" == headline.render(listed), (
    "README's results block is stale: python -m modernlm_jax.compare.headline "
    + " ".join(map(str, listed))
    + " --write README.md"
  )

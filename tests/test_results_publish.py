"""Publishing a comparison: COMMAND provenance, the publish copy, and the README headline block."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modernlm_jax import provenance
from modernlm_jax.compare import headline, publish
from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare.stats import summarize
from tests.test_report import make_results


def test_versus_says_no_significant_difference_unless_2_sigma():
  base = summarize([4.60, 4.62, 4.58])
  assert headline.versus(summarize([4.59, 4.63, 4.57]), base, True).endswith("no significant difference")
  assert headline.versus(summarize([4.40, 4.41, 4.39]), base, True).endswith("significantly better")
  assert headline.versus(summarize([4.80, 4.81, 4.79]), base, True).endswith("significantly worse")
  # Higher is better for accuracies: a significant increase is better.
  assert headline.versus(summarize([0.40, 0.41, 0.39]), summarize([0.30, 0.31, 0.29]), False).endswith("better")
  one = headline.versus(summarize([4.0]), summarize([4.6]), True)
  assert "not tested" in one and "better" not in one  # one seed is never a win
  assert headline.versus(None, base, True) == "not measured"


def test_headline_table_marks_and_words(tmp_path):
  res = make_results()
  folder = tmp_path / "cmp"
  folder.mkdir()
  results_lib.save(res, folder / "results.json")
  text = headline.render([folder])
  assert text.startswith(headline.BEGIN) and text.rstrip().endswith(headline.END)
  assert "### [cmp](" in text and "report.md)" in text
  rows = [line for line in text.splitlines() if line.startswith("| `")]
  assert len(rows) == 4  # gpt2 and modern at two scales
  gpt2_8m, modern_8m = rows[2], rows[3]
  assert gpt2_8m.endswith("| baseline |")
  # modern is 0.12 nats lower with seed sd 0.007: significant and better, and its loss cell is marked.
  assert "significantly better" in modern_8m and "4.0800 ± 0.0071 *" in modern_8m
  assert "Failed runs (left out of every cell): modern-8M-s2." in text
  assert "- `modern` vs `gpt2` at 8M: **" in text and "graduation rule" in text


def _workdir(tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  results_lib.save(make_results(), work / "results.json")
  return work


def test_publish_copies_command_and_rebuilds_report(tmp_path):
  work = _workdir(tmp_path)
  with pytest.raises(FileNotFoundError, match="COMMAND"):
    publish.publish(work, tmp_path / "out")
  assert not (tmp_path / "out").exists()  # refused before anything is written
  provenance.record_command(work, ["/x/modernlm_jax/main.py", "--config=configs/compare.py:cpu-floor"])
  out = tmp_path / "out"
  report = publish.publish(work, out)
  assert report == out / "report.md" and report.read_text().startswith("# Matched comparison report")
  assert json.loads((out / "results.json").read_text()) == json.loads((work / "results.json").read_text())
  lines = (out / "COMMAND").read_text().splitlines()
  assert lines[0] == "python -m modernlm_jax.main --config=configs/compare.py:cpu-floor"
  assert lines[1].startswith("commit ") and lines[2].startswith("started ")


def test_record_command_appends_on_resume(tmp_path):
  provenance.record_command(tmp_path, ["/x/modernlm_jax/main.py", "--a=1"])
  provenance.record_command(tmp_path, ["/x/modernlm_jax/main.py", "--a=1", "--b=two words"])
  lines = (tmp_path / "COMMAND").read_text().splitlines()
  assert len(lines) == 4 and lines[0] == "python -m modernlm_jax.main --a=1"
  assert lines[3].startswith("resumed ") and lines[3].endswith("--a=1 '--b=two words'")


def test_headline_check_and_write_cli(tmp_path):
  work = _workdir(tmp_path)
  readme = tmp_path / "README.md"
  readme.write_text(f"# x\n\nintro\n\n{headline.BEGIN}\nstale\n{headline.END}\n\nafter\n")
  cli = [sys.executable, "-m", "modernlm_jax.compare.headline", str(work)]
  stale = subprocess.run([*cli, "--check", str(readme)], capture_output=True, text=True)
  assert stale.returncode == 1 and "--write" in stale.stderr
  assert subprocess.run([*cli, "--write", str(readme)], capture_output=True, text=True).returncode == 0
  text = readme.read_text()
  assert text.startswith("# x\n\nintro\n\n") and text.endswith(f"{headline.END}\n\nafter\n") and "stale" not in text
  assert subprocess.run([*cli, "--check", str(readme)], capture_output=True, text=True).returncode == 0
  missing = subprocess.run([*cli[:-1], str(tmp_path / "nope")], capture_output=True, text=True)
  assert missing.returncode == 2 and "results.json does not exist" in missing.stderr


def test_code_commit_names_this_checkout():
  root = provenance.Path(provenance.__file__).resolve().parents[1]
  if not (root / ".git").exists():
    pytest.skip("not a git checkout")
  head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
  assert provenance.code_commit().split()[0] == head and len(head) == 40

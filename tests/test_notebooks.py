"""The Colab notebooks run headless (nbclient, python3 kernel) and show what they promise.

quickstart.ipynb trains the tiny preset for a short schedule (its "parameters" cell is rewritten) and
must print a falling loss, a sample and a perplexity better than chance; compare.ipynb renders a report
from a hand-made results.json. The committed notebooks carry no outputs.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 900  # one cell; the whole quickstart takes ~1-2 min on an idle 2-core machine


def _set_parameters(nb, **values) -> None:
  """Rewrites the cell tagged "parameters" (the papermill convention), keeping any name not given."""
  cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  source = cells[0].source
  for name, value in values.items():
    pattern = re.compile(rf"^{name} = .*$", re.M)
    assert pattern.search(source), f"parameter {name} is not in the parameters cell:\n{source}"
    source = pattern.sub(lambda _: f"{name} = {value!r}", source)
  cells[0].source = source


def _execute(nb, cwd: Path, monkeypatch) -> None:
  from nbclient import NotebookClient

  # The kernel inherits this environment: one CPU device (not the 8 fake ones of the root conftest),
  # and this interpreter first on PATH, since the python3 kernelspec starts `python`.
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MODERNLM_CACHE", str(cwd / "token_cache"))
  monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
  try:
    client.execute()
  finally:
    nbformat.write(nb, cwd / "executed.ipynb")  # kept for inspection when a cell or an assertion fails


def _text(cell) -> str:
  parts = []
  for out in cell.get("outputs", []):
    if out.output_type == "stream":
      parts.append(out.text)
    elif out.output_type in ("execute_result", "display_data"):
      parts.append(out.data.get("text/markdown", "") or out.data.get("text/plain", ""))
  return "".join(parts)


def _images(nb) -> int:
  return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def _cell_with(nb, marker: str):
  cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
  assert cells, f"no code cell contains {marker!r}"
  return cells[0]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "compare.ipynb"])
def test_committed_notebook_is_clean(name):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
  assert not dirty, f"{name}: cells {dirty} carry outputs; clear them before committing"
  install = nb.cells[1].source
  assert "import modernlm_jax" in install and "except ImportError" in install, (
    "first code cell must be the guarded install"
  )


@pytest.mark.slow
def test_quickstart_trains_samples_and_evaluates(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
  _set_parameters(nb, STEPS=40, LOG_EVERY=10, WORKDIR=str(tmp_path / "run"), EVAL_CHARS=6000)
  _execute(nb, tmp_path, monkeypatch)

  curve = _text(_cell_with(nb, "read_metrics(WORKDIR)"))
  losses = [(int(s), float(v)) for s, v in re.findall(r"step\s+(\d+)\s+train loss ([\d.]+)", curve)]
  assert [s for s, _ in losses] == [1, 10, 20, 30, 40], curve
  assert len(re.findall(r"val loss [\d.]+", curve)) == 4, curve  # eval_every aligned to LOG_EVERY: 10, 20, 30, 40
  assert losses[-1][1] < losses[0][1] - 0.5, f"loss did not fall: {losses}"
  assert _images(nb) >= 1, "the loss plot was not drawn"

  sample = re.findall(r"^sample: '(.*)'$", _text(_cell_with(nb, "print_sample(")), re.M)
  assert len(sample) == 1 and sample[0].startswith("The") and len(sample[0]) > len("The"), sample

  ev = _text(_cell_with(nb, "evaluate_text("))
  ppl, bpb = map(float, re.search(r"^perplexity ([\d.]+), bits per byte ([\d.]+)$", ev, re.M).groups())
  vocab, uniform_bpb = re.search(r"uniform guess: perplexity (\d+), bits per byte ([\d.]+)", ev).groups()
  assert ppl < int(vocab) and bpb < float(uniform_bpb), f"the trained model is no better than chance:\n{ev}"
  assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "checkpoints" / "40").is_dir()


@pytest.mark.slow
def test_compare_renders_report_from_results_json(tmp_path, monkeypatch):
  from test_report import make_results  # the hand-made comparison the report tests use

  from modernlm_jax.compare import results as results_lib
  from modernlm_jax.compare.report import FIGURES

  results_path = results_lib.save(make_results(), tmp_path / "results.json")
  nb = nbformat.read(NOTEBOOKS / "compare.ipynb", as_version=4)
  _set_parameters(nb, RESULTS_PATH=str(results_path), REPORT_DIR=str(tmp_path / "report"))
  _execute(nb, tmp_path, monkeypatch)

  table = _text(_cell_with(nb, "results_lib.load("))
  assert len(re.findall(r"^\S+\s+\S+\s+\d+\s+[\d,]+\s+ok\b", table, re.M)) == 8, table
  assert len(re.findall(r"\bfailed\b", table)) == 1, table
  report = _text(_cell_with(nb, "write_report("))
  assert "# Matched comparison report" in report and "## Verdict" in report
  drawn = [name for name in FIGURES.values() if (tmp_path / "report" / name).exists()]
  assert len(drawn) == len(FIGURES), drawn
  assert _images(nb) == len(FIGURES)


def _install_cell_as_python(name: str) -> str:
  """The install cell with its IPython lines (`!git ...`, `%pip ...`) recorded in RAN instead of run."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  out = ["RAN = []", "def _magic(cmd):", "    RAN.append(cmd)", "    sys.modules.pop('modernlm_jax', None)"]
  for line in nb.cells[1].source.splitlines():
    stripped = line.lstrip()
    if stripped.startswith(("!", "%pip")):
      indent = line[: len(line) - len(stripped)]
      out.append(f"{indent}_magic(f{stripped.lstrip('!')!r})")
    else:
      out.append(line)
  return (
    "import sys\nsys.modules['modernlm_jax'] = None  # as on a fresh Colab runtime\n"
    + "\n".join(out)
    + "\nprint('RAN', RAN)\n"
  )


@pytest.mark.parametrize("name", ["quickstart.ipynb", "compare.ipynb"])
def test_install_cell_installs_the_checkout_it_is_opened_from_or_asks_for_repo_url(name, tmp_path):
  import subprocess

  assert "YOUR_ORG" not in (NOTEBOOKS / name).read_text()
  code = _install_cell_as_python(name)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  env.pop("MODERNLM_REPO_URL", None)
  # Outside any checkout and without REPO_URL: a clear message, nothing cloned or installed.
  (tmp_path / "elsewhere").mkdir()
  res = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=120, env=env
  )
  assert res.returncode != 0 and "Set REPO_URL" in res.stderr and "RAN" not in res.stdout
  # Inside a checkout (Jupyter opened in its notebooks/ folder): that checkout is pip-installed.
  checkout = tmp_path / "checkout"
  (checkout / "modernlm_jax").mkdir(parents=True)
  (checkout / "notebooks").mkdir()
  (checkout / "pyproject.toml").write_text("[project]\nname = 'modernlm_jax'\n")
  (checkout / "modernlm_jax" / "__init__.py").write_text("")
  res = subprocess.run(
    [sys.executable, "-c", code], cwd=checkout / "notebooks", capture_output=True, text=True, timeout=120, env=env
  )
  assert res.returncode == 0, res.stderr[-2000:]
  ran = res.stdout.split("RAN", 1)[1]
  assert f"pip install -q -e \"{checkout}" in ran and "git clone" not in ran
  assert f"modernlm_jax: {checkout / 'modernlm_jax'}" in res.stdout
  # With REPO_URL set and no checkout: it clones REPO_URL (recorded, not run, so the clone is then missing).
  res = subprocess.run(
    [sys.executable, "-c", code],
    cwd=tmp_path / "elsewhere",
    capture_output=True,
    text=True,
    timeout=120,
    env={**env, "MODERNLM_REPO_URL": "https://example.invalid/modernlm_jax.git"},
  )
  assert "cloning https://example.invalid/modernlm_jax.git into /content/modernlm_jax gave no" in res.stderr


@pytest.mark.slow
def test_compare_notebook_launches_a_small_comparison(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOKS / "compare.ipynb", as_version=4)
  overrides = {
    "compare.families": "gpt2,modern",
    "compare.scales": "tiny",
    "train.steps": 10,
    "train.eval_every": 10,
    "train.checkpoint_every": 10,
    "train.batch_size": 8,
    "data.seq_len": 64,
    "train.eval_batches": 2,
    "compare.probes.enabled": False,
    "compare.inference.enabled": False,
    "compare.smoke.enabled": False,
  }
  _set_parameters(
    nb,
    LAUNCH="smoke",
    COMPARE_WORKDIR=str(tmp_path / "cmp"),
    LAUNCH_OVERRIDES=overrides,
    RESULTS_PATH=str(tmp_path / "not-used.json"),
  )
  _execute(nb, tmp_path, monkeypatch)
  assert "comparison finished" in _text(_cell_with(nb, "if LAUNCH:"))
  assert (tmp_path / "cmp" / "results.json").is_file()
  table = _text(_cell_with(nb, "results_lib.load("))
  assert len(re.findall(r"^\S+\s+tiny\s+0\s+[\d,]+\s+ok\b", table, re.M)) == 2, table
  assert "# Matched comparison report" in _text(_cell_with(nb, "write_report("))

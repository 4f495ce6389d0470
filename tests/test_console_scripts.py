"""Console scripts in pyproject equal the `python -m` forms (same function), and they resolve."""

import ast
import importlib
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
M_FORMS = {
  "modernlm-train": "modernlm_jax/main.py",
  "modernlm-eval": "modernlm_jax/lm_eval/__main__.py",
  "modernlm-generate": "modernlm_jax/generate_cli.py",
}


def _main_guard_calls(path: Path) -> set[str]:
  tree = ast.parse(path.read_text())
  calls = set()
  for node in tree.body:
    if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
      calls |= {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
  return calls


def test_console_scripts_are_the_module_entry_points():
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  assert set(M_FORMS) <= set(scripts)
  for name, path in M_FORMS.items():
    module, _, func = scripts[name].partition(":")
    assert callable(getattr(importlib.import_module(module), func)), name
    assert (REPO / path) == REPO / (module.replace(".", "/") + ".py"), name
    assert func in _main_guard_calls(REPO / path), f"{path}'s __main__ block does not call {func}()"
  # `python -m modernlm_jax.generate` hands over to the generate command.
  assert "main" in _main_guard_calls(REPO / "modernlm_jax/generate.py")

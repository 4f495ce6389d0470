"""The package's import graph: no cycles, and arrows only point down (main -> jobs -> compare -> eval -> train ->
model, data). Function-level imports count too: hiding a cycle inside a function does not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "modernlm_jax"
# A module may import only from layers strictly below its own, or from its own subpackage.
# paths (the local/gs:// file layer) sits below data, whose tokenizer files go through it.
LAYER = {
  "paths": -1,
  "provenance": -1,
  "model": 0,
  "data": 0,
  "train": 1,
  "generate": 1,
  "stateful": 1,
  "eval": 2,
  "interop": 3,
  "compare": 3,
  "config_base": 1,
  "config_check": 1,
  "lm_eval": 4,
  "generate_cli": 4,
  "jobs": 4,
  "main": 5,
}


def _module_name(path: Path) -> str:
  rel = path.relative_to(PKG.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, Path]:
  return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
  tree = ast.parse(path.read_text(), filename=str(path))
  out: set[str] = set()
  is_pkg = path.name == "__init__.py"
  for node in _walk_outside_main_guard(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".")
        anchor = anchor if is_pkg else anchor[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in known:
        t = t.rpartition(".")[0]
      if t and t.startswith("modernlm_jax") and t != name and t != "modernlm_jax":
        out.add(t)
  return out


def _walk_outside_main_guard(tree):
  """Every node except those under `if __name__ == "__main__":`, which is entry-point glue (a module's `-m` form
  may hand over to a command module above it)."""
  todo = [tree]
  while todo:
    node = todo.pop()
    if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
      continue
    yield node
    todo.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  known = set(mods)
  return {m: _imports(m, p, known) for m, p in mods.items()}


def _top(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, stack, on, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_sees_a_cycle():
  assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_package_has_no_import_cycles():
  cycles = find_cycles(_graph())
  assert not cycles, f"import cycles inside modernlm_jax: {cycles}"


def test_imports_point_down_the_layers():
  bad = []
  for mod, deps in _graph().items():
    src = _top(mod)
    for dep in deps:
      dst = _top(dep)
      if src == dst or not src or not dst:
        continue
      if src not in LAYER or dst not in LAYER:
        bad.append(f"{mod} -> {dep} (add {src if src not in LAYER else dst!r} to LAYER)")
      elif LAYER[dst] >= LAYER[src]:
        bad.append(f"{mod} -> {dep}")
  assert not bad, "imports against the layer arrows:\n" + "\n".join(sorted(bad))

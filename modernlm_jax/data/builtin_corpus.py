"""An offline English corpus built from the prose that ships with CPython itself.

Documents: every ``pydoc_data.topics`` help topic (the language reference text behind ``help()``),
and, per top-level standard-library module, its docstrings (module, classes, functions) joined in
source order. Sources are parsed with ``ast``; nothing is imported or executed. Together this is
about 1.3 MB of text, so ``source="builtin"`` trains on a fresh machine with no data and no network.

The content depends on the CPython version, so ``corpus_version()`` (part of every cache key and
fingerprint) includes it; on one interpreter it is fully deterministic.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import sysconfig
from pathlib import Path

_FORMAT_VERSION = "1"
# Docstrings shorter than this are mostly one-line API labels, not prose.
_MIN_DOCSTRING_WORDS = 8
# Not prose, or modules whose text is deliberately scrambled.
_SKIP_MODULES = frozenset({"this", "antigravity", "__phello__", "__hello__"})
# Share of documents held out for validation; larger than the 1% used for user corpora because
# the corpus is small and a validation set of a few documents would be too noisy.
VALIDATION_PERCENT = 5


def corpus_version() -> str:
  return f"builtin-v{_FORMAT_VERSION}-py{platform.python_version()}"


def _module_docstrings(path: Path) -> str:
  try:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return ""
  parts = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc and len(doc.split()) >= _MIN_DOCSTRING_WORDS:
        parts.append(doc.strip())
  return "\n\n".join(parts)


@functools.lru_cache(maxsize=1)
def builtin_documents() -> tuple[tuple[str, str], ...]:
  """All ``(name, text)`` documents in a fixed order (memoised: parsing takes a few seconds)."""
  from pydoc_data import topics

  docs = [(f"topic:{name}", text.strip()) for name, text in sorted(topics.topics.items())]
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  for path in sorted(stdlib.glob("*.py")):
    if path.stem in _SKIP_MODULES:
      continue
    text = _module_docstrings(path)
    if text:
      docs.append((f"module:{path.stem}", text))
  return tuple((name, text) for name, text in docs if text)


def is_validation_name(name: str) -> bool:
  """Split by a hash of the document's name, so adding a module never moves other documents."""
  digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") % 100 < VALIDATION_PERCENT


def builtin_split(split: str) -> list[str]:
  """The texts of one split: "train", "validation" or "all"."""
  docs = builtin_documents()
  if split == "all":
    return [text for _, text in docs]
  want_validation = split == "validation"
  return [text for name, text in docs if is_validation_name(name) == want_validation]

"""File helpers every data reader shares: globbing with a clear error, gzip-aware text opening, a stable
content hash (the key of held-out splits), and a cheap fingerprint of the files a source reads."""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
import os
from pathlib import Path
from typing import IO


def expand_glob(pattern: str) -> list[Path]:
  """Sorted files matching ``pattern``; a clear error when nothing matches."""
  expanded = os.path.expanduser(pattern)
  if Path(expanded).is_dir():
    raise ValueError(f"data path {pattern!r} is a directory; give a file glob such as '{pattern.rstrip('/')}/*.txt'")
  matches = sorted(Path(p) for p in globlib.glob(expanded, recursive=True) if Path(p).is_file())
  if not matches:
    raise FileNotFoundError(
      f"no files match the data pattern {pattern!r}; check the path (absolute, or relative to "
      f"{os.getcwd()}) or point data.source at existing files"
    )
  return matches


def open_text(path: Path, errors: str = "strict") -> IO[str]:
  """UTF-8 text, transparently gunzipped for ``*.gz``."""
  if Path(path).suffix == ".gz":
    return gzip.open(path, "rt", encoding="utf-8", errors=errors)
  return open(path, encoding="utf-8", errors=errors)


def content_hash(text: str) -> int:
  """A stable 64-bit hash of ``text`` (independent of the Python process): held-out splits key on it."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def files_fingerprint(paths: list[Path]) -> list[tuple[str, int, int]]:
  """(resolved path, size, mtime) per file: changes when a file is replaced or edited, without reading it."""
  return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]

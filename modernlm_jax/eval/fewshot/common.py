"""Shared pieces of the few-shot tasks: strict file readers, few-shot sampling, choice scoring.

Every reader checks the fields it needs and raises :class:`TaskDataError` naming the file,
the line (or item) and the field, so a malformed task file is fixed in one look.
"""

from __future__ import annotations

import bz2
import gzip
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modernlm_jax.eval.scoring import ForwardFn, Progress, encode_pair, score_requests

FEWSHOT_DELIMITER = "\n\n"


class TaskDataError(ValueError):
  """A task file is missing, malformed, or lacks a field."""


def open_text(path: str | Path) -> str:
  """UTF-8 text of ``path``; ``.bz2`` and ``.gz`` are decompressed on the fly."""
  path = Path(path)
  if not path.is_file():
    raise TaskDataError(
      f"task file {path} not found; pass the path to the task data (see the data folder's MANIFEST.md)"
    )
  if path.suffix == ".bz2":
    with bz2.open(path, "rt", encoding="utf-8") as f:
      return f.read()
  if path.suffix == ".gz":
    with gzip.open(path, "rt", encoding="utf-8") as f:
      return f.read()
  return path.read_text(encoding="utf-8")


def read_jsonl(path: str | Path, fields: dict[str, type | tuple[type, ...]]) -> list[dict[str, Any]]:
  """Rows of a JSON-lines file, each checked to hold ``fields`` with the given types."""
  rows = []
  for lineno, line in enumerate(open_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise TaskDataError(f"{path}: line {lineno} is not valid JSON ({e})") from e
    if not isinstance(row, dict):
      raise TaskDataError(f"{path}: line {lineno} is not a JSON object")
    for name, kind in fields.items():
      if name not in row:
        raise TaskDataError(f"{path}: line {lineno} is missing field {name!r} (has {sorted(row)})")
      if not isinstance(row[name], kind):
        raise TaskDataError(f"{path}: line {lineno} field {name!r} should be {kind}, got {type(row[name]).__name__}")
    rows.append(row)
  if not rows:
    raise TaskDataError(f"{path}: no examples found")
  return rows


def take(items: list[Any], limit: int | None) -> list[Any]:
  """The first ``limit`` items (all when None), so slices are identical across runs."""
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be >= 0 or None, got {limit}")
  return items if limit is None else items[:limit]


def fewshot_indices(pool_size: int, k: int, seed: int, exclude: int | None) -> list[int]:
  """``k`` distinct pool indices drawn by ``seed`` (per evaluated example), never ``exclude``."""
  if k == 0:
    return []
  candidates = [i for i in range(pool_size) if i != exclude]
  if k > len(candidates):
    raise ValueError(f"num_fewshot={k} but only {len(candidates)} few-shot examples available")
  return random.Random(seed).sample(candidates, k)


def build_prompt(shots: Sequence[str], query: str) -> str:
  return FEWSHOT_DELIMITER.join([*shots, query])


def score_choices(
  forward_fn: ForwardFn,
  tokenizer: Any,
  contexts: Sequence[str],
  choices: Sequence[Sequence[str]],
  *,
  context: int,
  batch_size: int,
  progress: Progress = None,
  label: str = "choices",
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
  """Log-likelihood of every choice continuation after its context.

  Returns per-example arrays of (sum log-prob per choice, greedy flag per choice) and a
  bool per example: its prompt had to be left-truncated to fit the context.
  """
  requests, sizes = [], []
  for ctx, opts in zip(contexts, choices):
    requests.extend(encode_pair(tokenizer, ctx, opt) for opt in opts)
    sizes.append(len(opts))
  scored = score_requests(forward_fn, requests, context=context, batch_size=batch_size, progress=progress, label=label)
  cuts = np.cumsum(sizes)[:-1]
  logprobs = np.split(scored.logprob, cuts)
  greedy = np.split(scored.is_greedy, cuts)
  truncated = np.array([t.any() for t in np.split(scored.truncated, cuts)], bool)
  return logprobs, greedy, truncated

"""Strided perplexity over a whole token stream, plus bits per UTF-8 byte and word perplexity.

Windowing (the strided scheme popularised by Hugging Face's perplexity guide): the first
window holds tokens ``[0, context]`` and scores all its ``context`` next-token predictions;
each later window is shifted right by ``stride`` and scores only its last ``stride``
predictions, so every token after the first is scored exactly once with at least
``context - stride`` tokens of left context (the final window may be shorter and score
fewer). ``stride == context`` gives non-overlapping chunks (the GPT-2 protocol:
sequence 1024). Every window is padded to exactly ``[batch_size, context]`` so the jitted
model compiles once.

Public API
----------
``evaluate_stream(forward_fn, token_ids, *, context, stride, batch_size, num_bytes,
                  num_words=None, progress=None) -> dict``
    keys: nats_per_token, perplexity, bits_per_byte, word_perplexity (when num_words),
    tokens (number of scored tokens = len(token_ids) - 1), bytes, words, windows.
``evaluate_text(forward_fn, tokenizer, text, *, context, stride, batch_size,
                prepend_eos=True, count_words=False, progress=None) -> dict``
    Tokenizes ``text``; with ``prepend_eos`` the eos id is put first so every token of the
    text is scored (then bits/byte covers all of ``text``'s UTF-8 bytes).
``load_corpus(spec, data_root) -> str``: ``"wikitext2:test"``, ``"wikitext103:valid"``,
    ``"ptb:test"``, ``"tinystories:valid"`` (see ``CORPORA``) or a path to a UTF-8 text file.
``load_text_files(pattern) -> (text, files)``: any text file or glob, joined into one stream.

bits_per_byte = nats_per_token * tokens / bytes / ln 2, which does not depend on the
tokenizer, so SentencePiece and GPT-2 BPE models compare fairly on the same text.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from modernlm_jax.eval.scoring import ForwardFn, Progress, Row, score_rows

# name -> (path under data_root, reader, word-level corpus?)
CORPORA: dict[str, tuple[str, str, bool]] = {
  "wikitext2:test": ("wikitext2/test.txt", "text", True),
  "wikitext2:valid": ("wikitext2/valid.txt", "text", True),
  "wikitext103:test": ("wikitext103/test.txt", "hf_csv", True),
  "wikitext103:valid": ("wikitext103/valid.txt", "hf_csv", True),
  "ptb:test": ("ptb/ptb.test.txt", "text", True),
  "ptb:valid": ("ptb/ptb.valid.txt", "text", True),
  "tinystories:valid": ("tinystories/tinystories_val.txt", "text", False),
}


def stream_windows(num_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
  """(input_start, input_end, first_scored_index_within_window) for each window.

  Window inputs are ``ids[start:end]`` predicting ``ids[start+1:end+1]``.
  """
  if context < 1:
    raise ValueError(f"context must be >= 1, got {context}")
  if not 1 <= stride <= context:
    raise ValueError(f"stride must be in [1, context={context}], got {stride}")
  num_targets = num_tokens - 1
  windows = []
  start, scored = 0, 0  # scored: predictions made so far (targets ids[1..scored])
  while scored < num_targets:
    end = min(start + context, num_targets)
    windows.append((start, end, scored - start))
    scored = end
    start += stride
  return windows


def evaluate_stream(
  forward_fn: ForwardFn,
  token_ids: np.ndarray,
  *,
  context: int,
  stride: int,
  batch_size: int,
  num_bytes: int,
  num_words: int | None = None,
  progress: Progress = None,
  label: str = "perplexity",
) -> dict[str, float]:
  """Strided perplexity of one token stream; see module docstring."""
  ids = np.asarray(token_ids, np.int32).reshape(-1)
  if ids.size < 2:
    raise ValueError(f"need at least 2 tokens to score a stream, got {ids.size}")
  if num_bytes <= 0:
    raise ValueError(f"num_bytes must be positive, got {num_bytes}")
  rows = [Row(ids[s:e], ids[s + 1 : e + 1], k) for s, e, k in stream_windows(ids.size, context, stride)]
  sum_lp, _, counts = score_rows(
    forward_fn, rows, seq_len=context, batch_size=batch_size, progress=progress, label=label
  )
  tokens = int(counts.sum())
  assert tokens == ids.size - 1, "every token after the first must be scored exactly once"
  total_nats = -float(sum_lp.sum())
  nats_per_token = total_nats / tokens
  result = {
    "nats_per_token": nats_per_token,
    "perplexity": math.exp(nats_per_token),
    "bits_per_byte": total_nats / num_bytes / math.log(2),
    "tokens": tokens,
    "bytes": int(num_bytes),
    "windows": len(rows),
    "context": int(context),
    "stride": int(stride),
  }
  if num_words is not None:
    if num_words <= 0:
      raise ValueError(f"num_words must be positive, got {num_words}")
    result["words"] = int(num_words)
    result["word_perplexity"] = math.exp(total_nats / num_words)
  return result


def evaluate_text(
  forward_fn: ForwardFn,
  tokenizer: Any,
  text: str,
  *,
  context: int,
  stride: int,
  batch_size: int,
  prepend_eos: bool = True,
  count_words: bool = False,
  progress: Progress = None,
  label: str = "perplexity",
) -> dict[str, float]:
  """Tokenizes ``text`` and runs :func:`evaluate_stream` (bytes/words counted from ``text``)."""
  if not text:
    raise ValueError("text is empty; nothing to evaluate")
  ids = list(tokenizer.encode(text))
  if prepend_eos:
    ids = [tokenizer.eos_id] + ids
  num_words = len(text.split()) if count_words else None
  return evaluate_stream(
    forward_fn,
    np.asarray(ids, np.int32),
    context=context,
    stride=stride,
    batch_size=batch_size,
    num_bytes=len(text.encode("utf-8")),
    num_words=num_words,
    progress=progress,
    label=label,
  )


def _read_hf_csv(path: Path) -> str:
  # HF `to_csv(sep="\n")` export: one row per original line, blank lines are empty rows.
  with path.open(encoding="utf-8", newline="") as f:
    rows = list(csv.reader(io.StringIO(f.read())))
  lines = []
  for i, row in enumerate(rows):
    if len(row) > 1:
      raise ValueError(
        f"{path}: row {i + 1} has {len(row)} fields; expected the one-column "
        "CSV export described in the folder's MANIFEST.md"
      )
    lines.append(row[0] if row and row[0] else " \n")
  return "".join(lines)


def corpus_path(spec: str, data_root: str | Path | None) -> Path:
  """Resolves a corpus name from ``CORPORA`` under ``data_root``, or a literal path."""
  if spec in CORPORA:
    if data_root is None:
      raise ValueError(f"corpus {spec!r} needs data_root (the shared data folder)")
    return Path(data_root) / CORPORA[spec][0]
  if ":" in spec and not Path(spec).exists():
    raise ValueError(f"unknown corpus {spec!r}; known: {sorted(CORPORA)} or a path to a .txt file")
  return Path(spec)


def load_corpus(spec: str, data_root: str | Path | None = None, *, max_chars: int | None = None) -> str:
  """Text of a named corpus (see ``CORPORA``) or of a UTF-8 file, optionally cut to a prefix."""
  path = corpus_path(spec, data_root)
  if not path.is_file():
    raise FileNotFoundError(f"corpus file {path} not found; check data_root or the path")
  reader = CORPORA[spec][1] if spec in CORPORA else "text"
  text = _read_hf_csv(path) if reader == "hf_csv" else path.read_text(encoding="utf-8")
  if max_chars is not None:
    text = text[:max_chars]
  return text


def load_text_files(pattern: str, *, max_chars: int | None = None) -> tuple[str, list[Path]]:
  """The UTF-8 text of every file matching ``pattern`` (a path or glob; sorted, joined by a blank line).

  For ``--config.eval.text=PATH``: any text, scored as one stream, bits/byte over all its bytes.
  """
  import glob as globlib

  expanded = str(Path(pattern).expanduser())
  files = sorted(Path(p) for p in globlib.glob(expanded, recursive=True) if Path(p).is_file())
  if not files:
    raise FileNotFoundError(
      f"eval.text={pattern!r} matches no file; give a text file or a glob such as '/data/books/*.txt'"
    )
  text = "\n\n".join(f.read_text(encoding="utf-8") for f in files)
  return (text if max_chars is None else text[:max_chars]), files


def with_split(spec: str, split: str) -> str:
  """``"wikitext2:test"`` with split ``"valid"`` -> ``"wikitext2:valid"`` when that corpus exists."""
  if not split or spec not in CORPORA:
    return spec
  if split not in ("test", "valid"):
    raise ValueError(f"eval.split={split!r} is not valid; choose 'test' or 'valid'")
  other = spec.split(":")[0] + ":" + split
  return other if other in CORPORA else spec


def is_word_level(spec: str) -> bool:
  """Whether word perplexity is meaningful (pre-split word-level corpora such as WikiText)."""
  return CORPORA.get(spec, ("", "", False))[2]

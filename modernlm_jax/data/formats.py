"""Post-training records -> token ids with loss masks (SFT) or prompt/chosen/rejected ids (DPO).

Files (``data.source`` = ``[jsonl:|json:]GLOB``, ``.gz`` read transparently): either a JSON array
of objects (e.g. Alpaca's ``alpaca_data.json``) or JSON Lines. Errors name the file and the line a
record starts on.

Record formats (``data.format``; ``auto`` picks one per file from the first record's fields):

  SFT
    ``alpaca``           ``instruction``, optional ``input``, ``output``: the Alpaca prompt template,
                         the loss covers ``output`` and its EOS.
    ``prompt_response``  ``prompt``, ``response``: the prompt text used as is.
    ``chat``             ``messages``: ``[{"role": "system"|"user"|"assistant", "content": ...}]``,
                         rendered as "\\n\\nHuman: ...\\n\\nAssistant: ..." (the HH-RLHF layout); the
                         loss covers every assistant turn and the final EOS.
  Preferences
    ``hh``               HH-RLHF ``chosen``, ``rejected``: two transcripts; the shared prompt runs up to
                         and including the last "\\n\\nAssistant:", the responses are what follows.
    ``prompt_chosen_rejected``  ``prompt``, ``chosen``, ``rejected``: the responses without the prompt.

Tokenization is joint: ``prompt + response`` is encoded as one text and the prompt's extent is the
longest common token prefix with the prompt encoded alone. Encoding the pieces separately would
change the text at the seam (SentencePiece adds a word-start marker to every separately encoded
piece, BPE merges may cross it), so the model would be trained on token sequences that generation
from an encoded prompt never produces. A token merged across the seam counts as response.

Over-long examples (more than ``max_tokens`` target tokens) follow ``Truncation.mode``:
``prompt_left`` drops the oldest prompt tokens (keeping at least ``min_prompt_tokens`` of the
prompt) and then, if still too long, cuts the response's end; ``right`` cuts the end of the whole
sequence; ``skip`` drops the example. Every case is counted in ``FormatStats``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from modernlm_jax.data.files import content_hash, expand_glob, open_text  # noqa: F401  (content_hash re-exported)
from modernlm_jax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)

SFT_FORMATS = ("alpaca", "prompt_response", "chat")
PREFERENCE_FORMATS = ("hh", "prompt_chosen_rejected")
TRUNCATION_MODES = ("prompt_left", "right", "skip")
HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"

ALPACA_PROMPT_WITH_INPUT = (
  "Below is an instruction that describes a task, paired with an input that provides further context. "
  "Write a response that appropriately completes the request.\n\n"
  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
  "Below is an instruction that describes a task. "
  "Write a response that appropriately completes the request.\n\n"
  "### Instruction:\n{instruction}\n\n### Response:\n"
)
_CHAT_ROLES = {"system": "", "user": HH_HUMAN + " ", "human": HH_HUMAN + " ", "assistant": HH_ASSISTANT + " "}


class RecordError(ValueError):
  """A record that cannot be used; the message starts with ``file:line``."""


class EmptyResponse(Exception):
  """A well-formed record with nothing to learn (empty response): skipped and counted, never an error."""


@dataclasses.dataclass
class FormatStats:
  """What happened to the records of one source; reported in logs and ``data_stats.json``."""

  records: int = 0
  skipped_bad: int = 0  # malformed records skipped under skip_bad_rows=True
  skipped_empty: int = 0  # empty response / chosen / rejected (Alpaca has a few empty outputs)
  skipped_identical: int = 0  # chosen == rejected (as text, or as tokens after truncation)
  skipped_too_long: int = 0  # over-long under mode "skip", or nothing trainable left after truncation
  truncated_prompt: int = 0
  truncated_response: int = 0
  prompt_from_common_prefix: int = 0  # HH pairs whose last "Assistant:" differs (a response quotes one)
  kept: int = 0

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)

  def add(self, other: "FormatStats") -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclasses.dataclass(frozen=True)
class Truncation:
  mode: str = "prompt_left"
  min_prompt_tokens: int = 32

  def __post_init__(self):
    if self.mode not in TRUNCATION_MODES:
      raise ValueError(f"data.truncation={self.mode!r} is not valid; choose one of {list(TRUNCATION_MODES)}")
    if self.min_prompt_tokens < 0:
      raise ValueError("data.min_prompt_tokens must be >= 0")


@dataclasses.dataclass(frozen=True)
class SFTExample:
  segments: tuple[tuple[str, bool], ...]  # (text, counts in the loss), concatenated in order
  where: str

  def content_key(self) -> str:
    return json.dumps(self.segments)


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
  prompt: str
  chosen: str
  rejected: str
  where: str

  def content_key(self) -> str:
    return json.dumps([self.prompt, self.chosen, self.rejected])


@dataclasses.dataclass(frozen=True)
class EncodedSFT:
  ids: np.ndarray  # int32 [n]: the target tokens (the row builder prepends EOS as BOS)
  mask: np.ndarray  # bool [n]: which targets count in the loss


@dataclasses.dataclass(frozen=True)
class EncodedPair:
  prompt: np.ndarray  # int32: shared prompt tokens
  chosen: np.ndarray  # int32: chosen response tokens (+ EOS unless cut)
  rejected: np.ndarray


# ----------------------------------------------------------------------------- reading files


def source_paths(spec: str) -> list[Path]:
  spec = spec.strip()
  for prefix in ("jsonl:", "json:"):
    if spec.startswith(prefix):
      spec = spec[len(prefix) :]
      break
  if not spec:
    raise ValueError("empty post-training data source; set --config.data.source=jsonl:PATH_OR_GLOB")
  try:
    return expand_glob(spec)
  except FileNotFoundError as err:
    raise FileNotFoundError(
      f"{err}. Set --config.data.source=jsonl:PATH_OR_GLOB (or $MODERNLM_SHARED_DATA for the shared data folder)"
    ) from None


def _json_array_records(path: Path, text: str) -> Iterator[tuple[Any, str]]:
  decoder = json.JSONDecoder()
  i = text.index("[") + 1
  n = len(text)
  line = 1 + text.count("\n", 0, i)
  last = i
  index = 0
  while True:
    while i < n and text[i] in " \t\r\n,":
      i += 1
    if i >= n:
      raise RecordError(f"{path}: the JSON array is not closed with ']'; the file is truncated")
    if text[i] == "]":
      return
    line += text.count("\n", last, i)
    try:
      obj, end = decoder.raw_decode(text, i)
    except json.JSONDecodeError as err:
      raise RecordError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); fix the file") from None
    # A JSON array is often one line: the record index is what locates it.
    yield obj, f"{path}:{line} (record {index})"
    index += 1
    last, i = i, end


def iter_records(
  spec: str, *, skip_bad_rows: bool = False, stats: FormatStats | None = None
) -> Iterator[tuple[Any, Path, str]]:
  """(parsed record, file, "file:line") for every record of every file matching ``spec``, in path order."""
  for path in source_paths(spec):
    with open_text(path) as f:
      text = f.read()
    if text.lstrip().startswith("["):
      for record, where in _json_array_records(path, text):
        yield record, path, where
      continue
    for lineno, raw in enumerate(text.split("\n"), start=1):
      if not raw.strip():
        continue
      try:
        record = json.loads(raw)
      except json.JSONDecodeError as err:
        if not skip_bad_rows:
          raise RecordError(
            f"{path}:{lineno}: invalid JSON ({err.msg}); fix the file or set "
            "data.skip_bad_rows=True to skip and count such records"
          ) from None
        if stats is not None:
          stats.skipped_bad += 1
        continue
      yield record, path, f"{path}:{lineno}"


# ----------------------------------------------------------------------------- records -> examples


def detect_format(record: Any, where: str) -> str:
  if isinstance(record, dict):
    keys = set(record)
    if "instruction" in keys:
      return "alpaca"
    if "messages" in keys:
      return "chat"
    if {"chosen", "rejected"} <= keys:
      return "prompt_chosen_rejected" if "prompt" in keys else "hh"
    if "prompt" in keys:
      return "prompt_response"
  fields = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
  raise RecordError(
    f"{where}: cannot tell the record format from its fields {fields}; set data.format to one of "
    f"{list(SFT_FORMATS + PREFERENCE_FORMATS)}"
  )


def _text_field(record: Any, name: str, where: str, *, optional: bool = False, response: bool = False) -> str:
  if not isinstance(record, dict):
    raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if name not in record or record[name] is None:
    if optional:
      return ""
    raise RecordError(f"{where}: record has no field {name!r} (fields: {sorted(record)[:8]})")
  value = record[name]
  if not isinstance(value, str):
    raise RecordError(f"{where}: field {name!r} is {type(value).__name__}, not a string")
  if response and not value.strip():
    raise EmptyResponse(where)
  return value


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
  """The Alpaca prompt (everything before the response)."""
  if input_text.strip():
    return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction.strip(), input=input_text.strip())
  return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction.strip())


def to_sft_example(record: Any, fmt: str, where: str) -> SFTExample:
  if fmt == "alpaca":
    prompt = alpaca_prompt(
      _text_field(record, "instruction", where), _text_field(record, "input", where, optional=True)
    )
    return SFTExample(((prompt, False), (_text_field(record, "output", where, response=True).strip(), True)), where)
  if fmt == "prompt_response":
    return SFTExample(
      ((_text_field(record, "prompt", where), False), (_text_field(record, "response", where, response=True), True)),
      where,
    )
  if fmt == "chat":
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
      raise RecordError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    segments: list[tuple[str, bool]] = []
    for k, m in enumerate(messages):
      if not isinstance(m, dict) or m.get("role") not in _CHAT_ROLES or not isinstance(m.get("content"), str):
        raise RecordError(f"{where}: message {k} must be {{'role': one of {sorted(_CHAT_ROLES)}, 'content': str}}")
      role = m["role"]
      if role == "assistant" and not m["content"].strip():
        raise EmptyResponse(where)
      segments.append((_CHAT_ROLES[role], False))
      segments.append((m["content"], role == "assistant"))
    if not segments[-1][1]:
      raise RecordError(f"{where}: the last message must be the assistant's (it is what the model learns)")
    return SFTExample(tuple(s for s in segments if s[0]), where)
  raise ValueError(f"data.format={fmt!r} is not an SFT format; choose one of {list(SFT_FORMATS)} or 'auto'")


def split_hh(chosen: str, rejected: str, where: str) -> tuple[str, str, str, bool]:
  """(prompt, chosen response, rejected response, prompt came from the common prefix)."""
  ic, ir = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
  if ic < 0 or ir < 0:
    raise RecordError(f"{where}: an HH-RLHF transcript has no {HH_ASSISTANT.strip()!r} turn")
  end_c, end_r = ic + len(HH_ASSISTANT), ir + len(HH_ASSISTANT)
  if chosen[:end_c] == rejected[:end_r]:
    return chosen[:end_c], chosen[end_c:], rejected[end_r:], False
  # A response that itself contains "Assistant:" moves the last one; the shared part ends at the
  # last "Assistant:" both transcripts have in common.
  n = 0
  limit = min(len(chosen), len(rejected))
  while n < limit and chosen[n] == rejected[n]:
    n += 1
  cut = chosen.rfind(HH_ASSISTANT, 0, n)
  if cut < 0:
    raise RecordError(f"{where}: chosen and rejected share no prompt ending in {HH_ASSISTANT.strip()!r}")
  end = cut + len(HH_ASSISTANT)
  return chosen[:end], chosen[end:], rejected[end:], True


def to_preference_example(record: Any, fmt: str, where: str, stats: FormatStats | None = None) -> PreferenceExample:
  if fmt == "hh":
    prompt, chosen, rejected, common = split_hh(
      _text_field(record, "chosen", where), _text_field(record, "rejected", where), where
    )
    if common and stats is not None:
      stats.prompt_from_common_prefix += 1
  elif fmt == "prompt_chosen_rejected":
    prompt = _text_field(record, "prompt", where)
    chosen, rejected = _text_field(record, "chosen", where), _text_field(record, "rejected", where)
  else:
    raise ValueError(
      f"data.format={fmt!r} is not a preference format; choose one of {list(PREFERENCE_FORMATS)} or 'auto'"
    )
  if not chosen.strip() or not rejected.strip():
    raise EmptyResponse(where)
  return PreferenceExample(prompt, chosen, rejected, where)


def load_examples(
  spec: str, kind: str, *, fmt: str = "auto", skip_bad_rows: bool = False, stats: FormatStats | None = None
) -> list:
  """All usable examples of ``spec`` (``kind`` "sft" -> SFTExample, "dpo" -> PreferenceExample).

  A bad record raises ``RecordError`` naming file and line, or with ``skip_bad_rows`` is skipped
  and counted; identical chosen/rejected pairs are always skipped and counted.
  """
  if kind not in ("sft", "dpo"):
    raise ValueError(f"kind must be 'sft' or 'dpo', got {kind!r}")
  allowed = SFT_FORMATS if kind == "sft" else PREFERENCE_FORMATS
  if fmt != "auto" and fmt not in allowed:
    raise ValueError(f"data.format={fmt!r} does not suit {kind}; choose 'auto' or one of {list(allowed)}")
  stats = stats if stats is not None else FormatStats()
  out = []
  file_format: dict[Path, str] = {}
  for record, path, where in iter_records(spec, skip_bad_rows=skip_bad_rows, stats=stats):
    stats.records += 1
    try:
      if path not in file_format:
        file_format[path] = fmt if fmt != "auto" else detect_format(record, where)
        if file_format[path] not in allowed:
          raise ValueError(
            f"{where}: records look like {file_format[path]!r} data, which {kind} cannot use (it needs "
            f"one of {list(allowed)}); point data.source at {'SFT' if kind == 'sft' else 'preference'} "
            "data or set data.format"
          )
      if kind == "sft":
        example = to_sft_example(record, file_format[path], where)
      else:
        example = to_preference_example(record, file_format[path], where, stats)
        if example.chosen == example.rejected:
          stats.skipped_identical += 1
          continue
    except EmptyResponse:
      stats.skipped_empty += 1
      continue
    except RecordError as err:
      if not skip_bad_rows:
        raise RecordError(
          f"{err}; fix the file or set data.skip_bad_rows=True to skip and count such records"
        ) from None
      stats.skipped_bad += 1
      continue
    out.append(example)
  if stats.skipped_bad:
    log.warning("%s: skipped %d malformed records", spec, stats.skipped_bad)
  return out


# ----------------------------------------------------------------------------- tokenization


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
  n = min(len(a), len(b))
  differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
  return int(differ[0]) if differ.size else n


def encode_sft(
  examples: Sequence[SFTExample],
  tokenizer: Tokenizer,
  max_tokens: int,
  truncation: Truncation,
  stats: FormatStats | None = None,
) -> list[EncodedSFT]:
  """Token ids (+EOS) and loss masks of SFT examples, each at most ``max_tokens`` long."""
  stats = stats if stats is not None else FormatStats()
  fulls, prefixes, owners = [], [], []
  for i, ex in enumerate(examples):
    texts = [t for t, _ in ex.segments]
    fulls.append("".join(texts))
    for k in range(1, len(texts)):
      prefixes.append("".join(texts[:k]))
      owners.append(i)
  full_ids = tokenizer.encode_batch(fulls) if fulls else []
  prefix_ids = tokenizer.encode_batch(prefixes) if prefixes else []
  boundaries: list[list[int]] = [[] for _ in examples]
  for i, ids in zip(owners, prefix_ids):
    boundaries[i].append(_common_prefix_len(ids, full_ids[i]))
  out = []
  for ex, ids, bounds in zip(examples, full_ids, boundaries):
    flags = [trained for _, trained in ex.segments]
    mask = np.zeros(len(ids) + 1, dtype=bool)
    edges = [0, *bounds, len(ids)]
    for k, trained in enumerate(flags):
      mask[edges[k] : max(edges[k], edges[k + 1])] = trained
    mask[-1] = flags[-1]  # EOS is learned only when it ends a response
    tokens = np.asarray([*ids, tokenizer.eos_id], dtype=np.int32)
    last_trained = max((k for k, f in enumerate(flags) if f), default=None)
    prompt_len = edges[last_trained] if last_trained is not None else len(tokens)
    encoded = _truncate_sft(tokens, mask, prompt_len, max_tokens, truncation, stats)
    if encoded is not None:
      out.append(encoded)
  stats.kept += len(out)
  return out


def _truncate_sft(tokens, mask, prompt_len, max_tokens, truncation: Truncation, stats) -> EncodedSFT | None:
  if len(tokens) > max_tokens:
    if truncation.mode == "skip":
      stats.skipped_too_long += 1
      return None
    if truncation.mode == "prompt_left":
      keep_prompt = min(
        prompt_len, max(max_tokens - (len(tokens) - prompt_len), min(truncation.min_prompt_tokens, max_tokens - 1))
      )
      drop = prompt_len - keep_prompt
      if drop > 0:
        stats.truncated_prompt += 1
        tokens, mask = tokens[drop:], mask[drop:]
    if len(tokens) > max_tokens:
      stats.truncated_response += 1
      tokens, mask = tokens[:max_tokens], mask[:max_tokens]
  if not mask.any():
    stats.skipped_too_long += 1
    return None
  return EncodedSFT(tokens, mask)


def encode_preferences(
  examples: Sequence[PreferenceExample],
  tokenizer: Tokenizer,
  max_tokens: int,
  truncation: Truncation,
  stats: FormatStats | None = None,
) -> list[EncodedPair]:
  """Shared prompt tokens and both responses (+EOS), each prompt+response at most ``max_tokens``."""
  stats = stats if stats is not None else FormatStats()
  prompt_ids = tokenizer.encode_batch([ex.prompt for ex in examples]) if examples else []
  chosen_ids = tokenizer.encode_batch([ex.prompt + ex.chosen for ex in examples]) if examples else []
  rejected_ids = tokenizer.encode_batch([ex.prompt + ex.rejected for ex in examples]) if examples else []
  eos = [tokenizer.eos_id]
  out = []
  for p, c, r in zip(prompt_ids, chosen_ids, rejected_ids):
    k = min(_common_prefix_len(p, c), _common_prefix_len(p, r))
    pair = _truncate_pair(
      np.asarray(c[:k], np.int32),
      np.asarray(c[k:] + eos, np.int32),
      np.asarray(r[k:] + eos, np.int32),
      max_tokens,
      truncation,
      stats,
    )
    if pair is not None:
      out.append(pair)
  stats.kept += len(out)
  return out


def _truncate_pair(prompt, chosen, rejected, max_tokens, truncation: Truncation, stats) -> EncodedPair | None:
  longest = max(len(chosen), len(rejected))
  if len(prompt) + longest > max_tokens:
    if truncation.mode == "skip":
      stats.skipped_too_long += 1
      return None
    if truncation.mode == "prompt_left":
      keep = min(len(prompt), max(max_tokens - longest, min(truncation.min_prompt_tokens, max_tokens - 1)))
      if keep < len(prompt):
        stats.truncated_prompt += 1
        prompt = prompt[len(prompt) - keep :]
    room = max_tokens - len(prompt)
    if room <= 0:
      stats.skipped_too_long += 1
      return None
    if longest > room:
      stats.truncated_response += 1
      chosen, rejected = chosen[:room], rejected[:room]
  if np.array_equal(chosen, rejected):
    stats.skipped_identical += 1
    return None
  return EncodedPair(prompt, chosen, rejected)

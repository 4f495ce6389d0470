"""GSM8K: k-shot prompt, greedy generation, final-number exact match.

``run_gsm8k(generate_fn, tokenizer, path, *, limit=None, num_fewshot=5, seed=0,
            context=1024, max_new_tokens=256, batch_size=16, fewshot_path=None,
            progress=None) -> dict``

Prompt (lm-evaluation-harness ``gsm8k`` layout): few-shot ``"Question: {q}\\nAnswer: {a}"``
blocks joined by blank lines, then ``"Question: {q}\\nAnswer:"``. Few-shot answers are the
full worked solutions ending in ``#### N``. They come from ``fewshot_path`` or, when omitted,
``train.jsonl`` next to ``path``, else from ``path`` itself (never the evaluated problem).

``generate_fn(prompts, max_new_tokens, stop_ids) -> list[list[int]]`` returns only the new
tokens. Generation stops at eos; the decoded text is then cut at the first ``"Question:"``
or blank line (a model that keeps going starts a new example there).

Metrics: ``exact_match_strict`` (the number after ``####``) and ``exact_match_flexible``
(the last number in the answer), compared after dropping ``,`` ``$`` and a trailing ``.``.
Prompts longer than ``context - max_new_tokens`` tokens are left-truncated and counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modernlm_jax.eval.fewshot.common import TaskDataError, build_prompt, fewshot_indices, read_jsonl, take
from modernlm_jax.eval.scoring import Progress

GenerateFn = Callable[[list[list[int]], int, list[int]], list[list[int]]]
STOP_STRINGS = ("Question:", "\n\n", "</s>", "<|im_end|>", "<|endoftext|>")
_STRICT = re.compile(r"#### *(-?[$0-9.,]+)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str:
  text = text.strip().replace(",", "").replace("$", "").rstrip(".")
  try:
    value = float(text)
  except ValueError:
    return text
  return str(int(value)) if value == int(value) else str(value)


def extract_strict(text: str) -> str | None:
  m = _STRICT.search(text)
  return normalize_number(m.group(1)) if m else None


def extract_flexible(text: str) -> str | None:
  found = _NUMBER.findall(text)
  return normalize_number(found[-1]) if found else None


def cut_at_stop(text: str) -> str:
  cut = min((i for i in (text.find(s) for s in STOP_STRINGS) if i >= 0), default=len(text))
  return text[:cut]


def load_gsm8k(path: str | Path) -> list[dict[str, str]]:
  rows = read_jsonl(path, {"question": str, "answer": str})
  for i, r in enumerate(rows):
    if extract_strict(r["answer"]) is None:
      raise TaskDataError(f"{path}: line {i + 1} field 'answer' has no final '#### N' number")
  return rows


def run_gsm8k(
  generate_fn: GenerateFn,
  tokenizer: Any,
  path: str | Path,
  *,
  limit: int | None = None,
  num_fewshot: int = 5,
  seed: int = 0,
  context: int = 1024,
  max_new_tokens: int = 256,
  batch_size: int = 16,
  fewshot_path: str | Path | None = None,
  progress: Progress = None,
) -> dict[str, Any]:
  if max_new_tokens >= context:
    raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in context={context}")
  docs = take(load_gsm8k(path), limit)
  if fewshot_path is None and (Path(path).parent / "train.jsonl").is_file() and Path(path).name != "train.jsonl":
    fewshot_path = Path(path).parent / "train.jsonl"
  same_file = fewshot_path is None
  pool = load_gsm8k(path) if same_file else load_gsm8k(fewshot_path)
  budget = context - max_new_tokens
  prompts, truncated = [], 0
  for i, doc in enumerate(docs):
    shots = [
      f"Question: {pool[j]['question']}\nAnswer: {pool[j]['answer']}"
      for j in fewshot_indices(len(pool), num_fewshot, seed + i, i if same_file else None)
    ]
    ids = list(tokenizer.encode(build_prompt(shots, f"Question: {doc['question']}\nAnswer:")))
    if len(ids) > budget:
      ids, truncated = ids[-budget:], truncated + 1
    prompts.append(ids)
  strict = flexible = 0
  samples = []
  for start in range(0, len(prompts), batch_size):
    outs = generate_fn(prompts[start : start + batch_size], max_new_tokens, [tokenizer.eos_id])
    for k, out in enumerate(outs):
      doc = docs[start + k]
      gold = extract_strict(doc["answer"])
      text = cut_at_stop(tokenizer.decode([t for t in out if t != tokenizer.eos_id]))
      strict += extract_strict(text) == gold
      flexible += extract_flexible(text) == gold
      if len(samples) < 3:
        samples.append({"question": doc["question"], "generated": text, "gold": gold})
    if progress is not None:
      progress(f"gsm8k {min(start + batch_size, len(prompts))}/{len(prompts)}")
  n = max(len(docs), 1)
  return {
    "task": "gsm8k",
    "n": len(docs),
    "num_fewshot": num_fewshot,
    "truncated": truncated,
    "exact_match_strict": strict / n,
    "exact_match_flexible": flexible / n,
    "fewshot_source": "same file" if same_file else str(fewshot_path),
    "chance": 0.0,
    "samples": samples,
  }

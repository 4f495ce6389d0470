"""Log-likelihood tasks in lm-evaluation-harness conventions: LAMBADA, HellaSwag, SST-2.

``run_lambada(forward_fn, tokenizer, path, *, limit=None, num_fewshot=0, seed=0,
              context=1024, batch_size=16, progress=None) -> dict``
    OpenAI-preprocessed LAMBADA jsonl (``{"text": ...}``): context = text up to the last
    space, target = " " + last word. Metrics: ``acc`` (target is the greedy continuation) and
    ``perplexity`` = exp(-mean target log-likelihood).
``run_hellaswag(...)``: 4-way completion; ``acc`` and ``acc_norm`` (log-likelihood divided
    by the ending's length in characters). Reads the official ``.jsonl`` or the 6-lines-per-item
    text layout (``.txt`` / ``.txt.bz2``: context, gold index, 4 endings). The text layout
    cannot restore lm-evaluation-harness's capitalised ``ctx_b``; the jsonl path does.
``run_sst2(...)``: GLUE SST-2 tsv (``sentence<TAB>label``); prompt
    ``"{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"`` and label
    words `` negative`` / `` positive``; metric ``acc`` (plus ``majority_baseline``).

Few-shot examples come from the same file (never the example itself), drawn with
``seed + example index`` and joined by blank lines. Every result holds ``n``,
``num_fewshot``, ``truncated`` (prompts left-truncated to fit ``context``) and ``chance``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from modernlm_jax.eval.fewshot.common import (
  TaskDataError,
  build_prompt,
  fewshot_indices,
  open_text,
  read_jsonl,
  score_choices,
  take,
)
from modernlm_jax.eval.scoring import ForwardFn, Progress

# ---------------------------------------------------------------- LAMBADA


def load_lambada(path: str | Path) -> list[tuple[str, str]]:
  docs = []
  for i, row in enumerate(read_jsonl(path, {"text": str})):
    text = row["text"].strip()
    if " " not in text:
      raise TaskDataError(f"{path}: example {i + 1} field 'text' has no space to split off the last word")
    ctx, word = text.rsplit(" ", 1)
    docs.append((ctx, " " + word))
  return docs


def run_lambada(
  forward_fn: ForwardFn,
  tokenizer: Any,
  path: str | Path,
  *,
  limit: int | None = None,
  num_fewshot: int = 0,
  seed: int = 0,
  context: int = 1024,
  batch_size: int = 16,
  progress: Progress = None,
) -> dict[str, Any]:
  pool = load_lambada(path)
  docs = take(pool, limit)
  contexts = []
  for i, (ctx, _) in enumerate(docs):
    shots = [pool[j][0] + pool[j][1] for j in fewshot_indices(len(pool), num_fewshot, seed + i, i)]
    contexts.append(build_prompt(shots, ctx))
  lps, greedy, truncated = score_choices(
    forward_fn,
    tokenizer,
    contexts,
    [[t] for _, t in docs],
    context=context,
    batch_size=batch_size,
    progress=progress,
    label="lambada",
  )
  lp = np.array([x[0] for x in lps])
  return {
    "task": "lambada",
    "n": len(docs),
    "num_fewshot": num_fewshot,
    "truncated": int(truncated.sum()),
    "acc": float(np.mean([g[0] for g in greedy])),
    "perplexity": math.exp(-lp.mean()),
    "chance": 0.0,
  }


# ---------------------------------------------------------------- HellaSwag


def _hellaswag_text(path: str | Path) -> list[dict[str, Any]]:
  lines = open_text(path).split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  if len(lines) % 6:
    raise TaskDataError(
      f"{path}: {len(lines)} lines is not a multiple of 6; expected items of 6 lines (context, gold index, 4 endings)"
    )
  items = []
  for k in range(0, len(lines), 6):
    ctx, label, *endings = lines[k : k + 6]
    if not label.strip().isdigit() or int(label) not in range(4):
      raise TaskDataError(f"{path}: line {k + 2} field 'label' should be 0..3, got {label!r}")
    items.append({"query": ctx, "endings": endings, "label": int(label)})
  return items


def _hellaswag_jsonl(path: str | Path) -> list[dict[str, Any]]:
  rows = read_jsonl(path, {"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": list, "label": (int, str)})
  items = []
  for i, r in enumerate(rows):
    if len(r["endings"]) != 4 or str(r["label"]) not in ("0", "1", "2", "3"):
      raise TaskDataError(f"{path}: line {i + 1} needs 4 'endings' and a 'label' in 0..3")
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    items.append(
      {
        "query": _hellaswag_clean(r["activity_label"] + ": " + ctx),
        "endings": [_hellaswag_clean(e) for e in r["endings"]],
        "label": int(r["label"]),
      }
    )
  return items


def _hellaswag_clean(text: str) -> str:
  text = text.strip().replace(" [title]", ". ")
  for marker in ("[header]", "[step]", "[substeps]", "[title] ", "[title]."):
    text = text.replace(marker, "")
  return " ".join(text.split())


def load_hellaswag(path: str | Path) -> list[dict[str, Any]]:
  name = Path(path).name
  return _hellaswag_jsonl(path) if name.endswith((".jsonl", ".jsonl.gz")) else _hellaswag_text(path)


def run_hellaswag(
  forward_fn: ForwardFn,
  tokenizer: Any,
  path: str | Path,
  *,
  limit: int | None = None,
  num_fewshot: int = 0,
  seed: int = 0,
  context: int = 1024,
  batch_size: int = 16,
  progress: Progress = None,
) -> dict[str, Any]:
  pool = load_hellaswag(path)
  items = take(pool, limit)
  contexts = []
  for i, item in enumerate(items):
    shots = [
      pool[j]["query"] + " " + pool[j]["endings"][pool[j]["label"]]
      for j in fewshot_indices(len(pool), num_fewshot, seed + i, i)
    ]
    contexts.append(build_prompt(shots, item["query"]))
  choices = [[" " + e for e in item["endings"]] for item in items]
  lps, _, truncated = score_choices(
    forward_fn,
    tokenizer,
    contexts,
    choices,
    context=context,
    batch_size=batch_size,
    progress=progress,
    label="hellaswag",
  )
  gold = np.array([item["label"] for item in items])
  pred = np.array([int(np.argmax(lp)) for lp in lps])
  lengths = [np.array([max(len(e), 1) for e in item["endings"]], float) for item in items]
  pred_norm = np.array([int(np.argmax(lp / n)) for lp, n in zip(lps, lengths)])
  return {
    "task": "hellaswag",
    "n": len(items),
    "num_fewshot": num_fewshot,
    "truncated": int(truncated.sum()),
    "acc": float(np.mean(pred == gold)),
    "acc_norm": float(np.mean(pred_norm == gold)),
    "chance": 0.25,
  }


# ---------------------------------------------------------------- SST-2

SST2_QUESTION = "\nQuestion: Is this sentence positive or negative?\nAnswer:"
SST2_LABEL_WORDS = (" negative", " positive")


def load_sst2(path: str | Path) -> list[tuple[str, int]]:
  lines = open_text(path).splitlines()
  header = lines[0].split("\t") if lines else []
  for field in ("sentence", "label"):
    if field not in header:
      raise TaskDataError(
        f"{path}: header {header} is missing field {field!r}; expected a GLUE tsv with a 'sentence<TAB>label' header"
      )
  s_col, l_col = header.index("sentence"), header.index("label")
  docs = []
  for lineno, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    cols = line.split("\t")
    if len(cols) <= max(s_col, l_col) or cols[l_col].strip() not in ("0", "1"):
      raise TaskDataError(
        f"{path}: line {lineno} field 'label' should be 0 or 1 "
        f"(got {cols[l_col] if len(cols) > l_col else 'nothing'!r})"
      )
    docs.append((cols[s_col].strip(), int(cols[l_col])))
  if not docs:
    raise TaskDataError(f"{path}: no examples found")
  return docs


def run_sst2(
  forward_fn: ForwardFn,
  tokenizer: Any,
  path: str | Path,
  *,
  limit: int | None = None,
  num_fewshot: int = 0,
  seed: int = 0,
  context: int = 1024,
  batch_size: int = 16,
  progress: Progress = None,
) -> dict[str, Any]:
  pool = load_sst2(path)
  docs = take(pool, limit)
  contexts = []
  for i, (sentence, _) in enumerate(docs):
    shots = [
      pool[j][0] + SST2_QUESTION + SST2_LABEL_WORDS[pool[j][1]]
      for j in fewshot_indices(len(pool), num_fewshot, seed + i, i)
    ]
    contexts.append(build_prompt(shots, sentence + SST2_QUESTION))
  lps, _, truncated = score_choices(
    forward_fn,
    tokenizer,
    contexts,
    [list(SST2_LABEL_WORDS)] * len(docs),
    context=context,
    batch_size=batch_size,
    progress=progress,
    label="sst2",
  )
  gold = np.array([label for _, label in docs])
  pred = np.array([int(np.argmax(lp)) for lp in lps])
  return {
    "task": "sst2",
    "n": len(docs),
    "num_fewshot": num_fewshot,
    "truncated": int(truncated.sum()),
    "acc": float(np.mean(pred == gold)),
    "majority_baseline": float(max(gold.mean(), 1 - gold.mean())),
    "predicted_positive": float(pred.mean()),
    "chance": 0.5,
  }

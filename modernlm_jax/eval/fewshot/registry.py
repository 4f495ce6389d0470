"""Few-shot tasks by name: the one table the suite, the markdown tables, the stage table and the comparison read.

A new task is its run function (``run(fn, tokenizer, path, *, limit, num_fewshot, seed, context, batch_size,
progress, **kw) -> {metric: value, "n": ..., "num_fewshot": ..., "truncated": ...}``) and one ``register_task``
call (or entry below).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from modernlm_jax.eval.fewshot.choice import run_hellaswag, run_lambada, run_sst2
from modernlm_jax.eval.fewshot.gsm8k import run_gsm8k


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  files: tuple[str, ...]  # candidates under the data root, first existing wins (see each folder's MANIFEST.md)
  run: Callable
  num_fewshot: int
  metrics: tuple[str, ...]  # reported in tables, in this order
  needs: str = "forward"  # "forward": scored by log-likelihood; "generate": needs a generate_fn
  headline: str = ""  # the one number comparisons and stage tables use; default: the first metric

  def __post_init__(self):
    if not self.headline:
      object.__setattr__(self, "headline", self.metrics[0])


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
  if task.needs not in ("forward", "generate"):
    raise ValueError(f"task {task.name!r}: needs must be 'forward' or 'generate', got {task.needs!r}")
  TASKS[task.name] = task
  return task


for _task in (
  Task("lambada", ("lambada/lambada_test.jsonl",), run_lambada, 0, ("acc", "perplexity")),
  # The official HellaSwag jsonl first, if someone adds it.
  Task(
    "hellaswag",
    ("hellaswag/hellaswag_val.jsonl", "hellaswag/hellaswag_val_full.txt.bz2", "hellaswag/hellaswag_val_full.txt"),
    run_hellaswag,
    0,
    ("acc", "acc_norm"),
    headline="acc_norm",
  ),
  Task("sst2", ("sst2/dev.tsv",), run_sst2, 4, ("acc",)),
  Task("gsm8k", ("gsm8k/test.jsonl",), run_gsm8k, 5, ("exact_match_strict", "exact_match_flexible"), needs="generate"),
):
  register_task(_task)


def task_path(name: str, data_root: str | Path) -> Path | None:
  """The task's data file under ``data_root``, or None when none of its candidates exist."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
  for rel in TASKS[name].files:
    if (Path(data_root) / rel).is_file():
      return Path(data_root) / rel
  return None

"""Few-shot tasks (lm-evaluation-harness conventions), one import point.

Log-likelihood tasks take a ``forward_fn``; GSM8K takes a ``generate_fn``:

``run_lambada(forward_fn, tokenizer, path, *, limit, num_fewshot, seed, context, batch_size, progress)``
``run_hellaswag(forward_fn, tokenizer, path, ...)``   -> acc, acc_norm
``run_sst2(forward_fn, tokenizer, path, ...)``        -> acc, majority_baseline
``run_gsm8k(generate_fn, tokenizer, path, ..., max_new_tokens, fewshot_path)`` -> exact matches

``TASKS`` (``registry.py``) is the table of tasks: files under the shared data root (see each folder's
MANIFEST.md), run function, shots, metrics; ``task_path(name, data_root)`` resolves a task's file. Malformed files raise
:class:`TaskDataError` naming the file, line and field.
"""

from __future__ import annotations

from modernlm_jax.eval.fewshot.choice import (
  load_hellaswag,
  load_lambada,
  load_sst2,
  run_hellaswag,
  run_lambada,
  run_sst2,
)
from modernlm_jax.eval.fewshot.common import TaskDataError
from modernlm_jax.eval.fewshot.gsm8k import load_gsm8k, run_gsm8k
from modernlm_jax.eval.fewshot.registry import TASKS, Task, register_task, task_path  # noqa: E402

# Views of the registry, for callers that want one aspect.
TASK_FILES: dict[str, tuple[str, ...]] = {name: t.files for name, t in TASKS.items()}
LOGLIKELIHOOD_TASKS = {name: t.run for name, t in TASKS.items() if t.needs == "forward"}
GENERATION_TASKS = {name: t.run for name, t in TASKS.items() if t.needs == "generate"}


__all__ = [
  "TASKS",
  "Task",
  "register_task",
  "TASK_FILES",
  "LOGLIKELIHOOD_TASKS",
  "GENERATION_TASKS",
  "TaskDataError",
  "task_path",
  "run_lambada",
  "run_hellaswag",
  "run_sst2",
  "run_gsm8k",
  "load_lambada",
  "load_hellaswag",
  "load_sst2",
  "load_gsm8k",
]

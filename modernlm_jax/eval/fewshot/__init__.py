"""Few-shot tasks (lm-evaluation-harness conventions), one import point.

Log-likelihood tasks take a ``forward_fn``; GSM8K takes a ``generate_fn``:

``run_lambada(forward_fn, tokenizer, path, *, limit, num_fewshot, seed, context, batch_size, progress)``
``run_hellaswag(forward_fn, tokenizer, path, ...)``   -> acc, acc_norm
``run_sst2(forward_fn, tokenizer, path, ...)``        -> acc, majority_baseline
``run_gsm8k(generate_fn, tokenizer, path, ..., max_new_tokens, fewshot_path)`` -> exact matches

``TASK_FILES`` maps each task to its file under the shared data root (see each folder's
MANIFEST.md); ``task_path(name, data_root)`` resolves it. Malformed files raise
:class:`TaskDataError` naming the file, line and field.
"""

from __future__ import annotations

from pathlib import Path

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

TASK_FILES: dict[str, tuple[str, ...]] = {
    # First existing candidate wins (the official HellaSwag jsonl if someone adds it).
    "lambada": ("lambada/lambada_test.jsonl",),
    "hellaswag": ("hellaswag/hellaswag_val.jsonl", "hellaswag/hellaswag_val_full.txt.bz2",
                  "hellaswag/hellaswag_val_full.txt"),
    "sst2": ("sst2/dev.tsv",),
    "gsm8k": ("gsm8k/test.jsonl",),
}

LOGLIKELIHOOD_TASKS = {"lambada": run_lambada, "hellaswag": run_hellaswag, "sst2": run_sst2}
GENERATION_TASKS = {"gsm8k": run_gsm8k}


def task_path(name: str, data_root: str | Path) -> Path | None:
    """The task's data file under ``data_root``, or None when none of its candidates exist."""
    if name not in TASK_FILES:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASK_FILES)}")
    for rel in TASK_FILES[name]:
        if (Path(data_root) / rel).is_file():
            return Path(data_root) / rel
    return None


__all__ = ["TASK_FILES", "LOGLIKELIHOOD_TASKS", "GENERATION_TASKS", "TaskDataError", "task_path",
           "run_lambada", "run_hellaswag", "run_sst2", "run_gsm8k",
           "load_lambada", "load_hellaswag", "load_sst2", "load_gsm8k"]

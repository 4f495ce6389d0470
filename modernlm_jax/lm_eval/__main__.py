"""`python -m modernlm_jax.lm_eval --checkpoint RUN --tasks TASK[,TASK...]`: lm-evaluation-harness on our checkpoints.

Tasks are lm-eval's (they download their data sets from the Hugging Face hub unless cached) or local task
YAML files found through `--include_path DIR` (e.g. `dataset_path: json` with `dataset_kwargs: data_files`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m modernlm_jax.lm_eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--checkpoint",
    required=True,
    help="run directory (newest checkpoint), one <run>/checkpoints/<step>, or a params directory",
  )
  p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
  p.add_argument("--include_path", default=None, help="folder of extra task YAML files")
  p.add_argument("--num_fewshot", type=int, default=None)
  p.add_argument("--limit", type=float, default=None, help="items per task (a fraction when < 1)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--context", type=int, default=0, help="tokens of context (default: the model's max_len)")
  p.add_argument("--max_gen_toks", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output_path", default=None, help="write lm-eval's results dict as JSON here")
  p.add_argument("--log_samples", action="store_true", help="keep per-item records in the JSON")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table
  except ImportError as e:
    print(f"error: the lm-eval backend needs lm-evaluation-harness: pip install -e '.[lmeval]' ({e})", file=sys.stderr)
    return 1
  from modernlm_jax.eval.checkpoint_model import EvalCheckpointError
  from modernlm_jax.lm_eval.adapter import ModernLM

  try:
    lm = ModernLM(args.checkpoint, batch_size=args.batch_size, context=args.context, max_gen_toks=args.max_gen_toks)
  except (EvalCheckpointError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  tasks = [t for t in args.tasks.split(",") if t]
  manager = TaskManager(include_path=args.include_path) if args.include_path else TaskManager()
  unknown = [t for t in tasks if t not in manager.all_tasks]
  if unknown:
    print(
      f"error: unknown lm-eval task(s) {unknown}; check the name or pass --include_path with their YAML",
      file=sys.stderr,
    )
    return 1
  results = lm_eval.simple_evaluate(
    model=lm,
    tasks=tasks,
    num_fewshot=args.num_fewshot,
    limit=args.limit,
    task_manager=manager,
    log_samples=args.log_samples,
    random_seed=args.seed,
    numpy_random_seed=args.seed,
    torch_random_seed=args.seed,
    fewshot_random_seed=args.seed,
  )
  print(make_table(results))
  if lm.truncated:
    print(f"note: {lm.truncated} request(s) were left-truncated to the {lm.context}-token context")
  if args.output_path:
    out = Path(args.output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: results[k] for k in ("results", "configs", "versions", "n-shot", "samples") if k in results}
    out.write_text(
      json.dumps({**keep, "checkpoint": args.checkpoint, "truncated": lm.truncated}, indent=2, default=str) + "\n"
    )
    print(f"wrote {out}")
  return 0


def cli() -> None:
  """The console script (same as the `-m` form)."""
  sys.exit(main())


if __name__ == "__main__":
  cli()

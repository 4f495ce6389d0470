"""`python -m modernlm_jax.generate --checkpoint RUN --prompt "Once upon a time"`: sampling from a checkpoint.

Prompts come from `--prompt` (repeatable) and/or `--prompts_file` (one prompt per line; `\\n` inside a line is a
newline); they are generated in batches of `--batch_size`. `--temperature 0` is greedy. `--stream_sinks K` keeps the
first K tokens plus a rolling window in a cache of `--cache_len` slots (StreamingLLM), so generation can run past
the model's training length.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m modernlm_jax.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--checkpoint",
    required=True,
    help="run directory (newest checkpoint), one <run>/checkpoints/<step>, or a params directory",
  )
  p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
  p.add_argument("--prompts_file", default=None, help="text file with one prompt per line")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=40, help="0 = off")
  p.add_argument("--top_p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument(
    "--stream_sinks",
    type=int,
    default=None,
    help="attention-sink tokens kept by a streaming cache (e.g. 4); default: a linear KV cache",
  )
  p.add_argument("--cache_len", type=int, default=None, help="KV-cache slots (default: the model's max_len)")
  p.add_argument("--no_stop", action="store_true", help="do not stop at the tokenizer's EOS")
  p.add_argument("--jsonl", action="store_true", help="print one JSON object per prompt instead of plain text")
  return p


def read_prompts(args) -> list[str]:
  prompts = list(args.prompt)
  if args.prompts_file:
    path = Path(args.prompts_file)
    if not path.is_file():
      raise ValueError(f"--prompts_file {path} does not exist")
    prompts += [line.replace("\\n", "\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  if not prompts:
    raise ValueError("no prompt: pass --prompt TEXT (repeatable) or --prompts_file FILE")
  return prompts


def check_args(args, max_len: int) -> None:
  if args.max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
  if args.batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
  if args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
    raise ValueError("--temperature must be >= 0, --top_k >= 0 and --top_p in (0, 1]")
  cache_len = args.cache_len or max_len
  if args.stream_sinks is not None and not 0 <= args.stream_sinks < cache_len - 1:
    raise ValueError(f"--stream_sinks {args.stream_sinks} must be in [0, cache_len - 1 = {cache_len - 1})")
  if args.stream_sinks is None and args.max_new_tokens >= cache_len:
    raise ValueError(
      f"--max_new_tokens {args.max_new_tokens} leaves no room for a prompt in {cache_len} cache slots; "
      "lower it or stream with --stream_sinks 4"
    )


def run(args) -> list[dict]:
  from modernlm_jax.eval.checkpoint_model import load_eval_model
  from modernlm_jax.generate import generate

  prompts = read_prompts(args)  # bad input fails before the checkpoint is read
  model = load_eval_model(args.checkpoint)
  check_args(args, model.cfg.max_len)
  tok, cfg = model.tokenizer, model.cfg
  cache_len = args.cache_len or cfg.max_len
  budget = cache_len if args.stream_sinks is not None else cache_len - args.max_new_tokens
  stop = [] if args.no_stop else [tok.eos_id]
  results = []
  for start in range(0, len(prompts), args.batch_size):
    chunk = prompts[start : start + args.batch_size]
    ids = [(tok.encode(p) or [tok.eos_id])[-budget:] for p in chunk]
    outs = generate(
      model.params,
      cfg,
      ids,
      max_new_tokens=args.max_new_tokens,
      temperature=args.temperature,
      top_k=args.top_k,
      top_p=args.top_p,
      stop_ids=stop,
      seed=args.seed + start,
      cache_len=cache_len,
      stream_sinks=args.stream_sinks,
    )
    for prompt, out in zip(chunk, outs):
      text = tok.decode([t for t in out if t not in stop])
      results.append({"prompt": prompt, "completion": text, "tokens": len(out)})
  return results


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from modernlm_jax.eval.checkpoint_model import EvalCheckpointError

  try:
    results = run(args)
  except (EvalCheckpointError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for r in results:
    print(json.dumps(r) if args.jsonl else r["prompt"] + r["completion"], flush=True)
  return 0


def cli() -> None:
  """The console script (same as the `-m` form)."""
  sys.exit(main())


if __name__ == "__main__":
  cli()

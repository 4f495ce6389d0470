"""Evaluation task: one or more checkpoints -> a named suite -> eval.json + eval.md (+ a stage table).

  python -m modernlm_jax.main --config=configs/eval.py --config.checkpoint=runs/x --workdir=runs/x-eval
  python -m modernlm_jax.main --config=configs/eval.py:full --config.checkpoint=runs/gpt2-hf
  python -m modernlm_jax.main --config=configs/eval.py --config.stages=pretrain=runs/a,sft=runs/b,dpo=runs/c

`eval.json` maps each checkpoint to its suite result (see eval/suite.py) plus what was evaluated
(step, parameters, tokenizer, seconds). `eval.md` is the same as markdown and is also printed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from modernlm_jax import paths
from modernlm_jax.compare import stage_table as stage_table_lib
from modernlm_jax.eval import perplexity
from modernlm_jax.eval import suite as suite_lib
from modernlm_jax.eval.checkpoint_model import EvalModel, load_eval_model

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_DEFAULT_CONTEXT = 1024


def default_data_root() -> Path:
  return Path(os.environ.get("MODERNLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def resolve_data_root(value: str) -> Path | None:
  """The shared data folder, or None (tasks are then skipped with a reason) when it is absent."""
  root = Path(value).expanduser() if value else default_data_root()
  if not root.is_dir():
    logging.warning("data_root %s does not exist; corpora and tasks that need it are skipped", root)
    return None
  return root


def parse_stages(spec: str) -> dict[str, str]:
  """ "pretrain=runs/a,sft=runs/b" -> {"pretrain": "runs/a", "sft": "runs/b"} (order kept)."""
  stages: dict[str, str] = {}
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise ValueError(
        f"config.stages item {item!r} is not name=path; write e.g. "
        "--config.stages=pretrain=runs/a,sft=runs/b,dpo=runs/c"
      )
    if name.strip() in stages:
      raise ValueError(f"config.stages names stage {name.strip()!r} twice")
    stages[name.strip()] = path.strip()
  return stages


def eval_context(requested: int, max_len: int, trained_len: int | None = None) -> int:
  """The evaluation context: `requested`, else the length the model was trained at, else max_len (≤ 1024)."""
  if requested <= 0:
    if trained_len:
      return min(int(trained_len), max_len)  # positions past the trained length were never trained
    return min(max_len, MAX_DEFAULT_CONTEXT)
  if requested > max_len:
    raise ValueError(
      f"config.context={requested} exceeds the model's max_len {max_len}; lower --config.context "
      "(0 = the trained length, else the model's max_len capped at 1024)"
    )
  return requested


def trained_length(model: EvalModel) -> int | None:
  """data.seq_len of the run that wrote the checkpoint (None for imported weights)."""
  seq_len = (((model.meta or {}).get("config") or {}).get("data") or {}).get("seq_len")
  return int(seq_len) if seq_len else None


def context_note(context: int, max_len: int, trained_len: int | None, requested: int) -> str | None:
  """Why the evaluation context is not the model's max_len (None when it is)."""
  if requested > 0:
    if trained_len and requested > trained_len:
      return (
        f"context {requested} (config.context) is longer than the trained length {trained_len}: positions "
        f"past {trained_len} were never trained"
      )
    return None if requested == max_len else f"context {requested}: set by config.context (max_len {max_len})"
  if context == max_len:
    return None
  if trained_len and context == min(trained_len, max_len):
    return (
      f"context {context}: the length the checkpoint was trained at (data.seq_len={trained_len}); max_len "
      f"{max_len} has position rows it never trained. Set --config.context to override"
    )
  return f"context {context}: max_len {max_len} capped at {MAX_DEFAULT_CONTEXT}"


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return x


def evaluate_model(model: EvalModel, config, data_root: Path | None, progress=print) -> dict[str, Any]:
  """Runs the configured suite on one loaded model; returns the suite result plus what was evaluated."""
  trained = trained_length(model)
  context = eval_context(int(config.context), model.cfg.max_len, trained)
  note = context_note(context, model.cfg.max_len, trained, int(config.context))
  if note:
    logging.info("evaluation %s", note)
  batch_size = int(config.batch_size)
  ev = config.get("eval") or {}
  texts = None
  if str(ev.get("text", "")).strip():
    text, files = perplexity.load_text_files(str(ev.text))
    logging.info("eval.text: %d file(s), %d characters", len(files), len(text))
    texts = {f"text:{ev.text}": text}
  t0 = time.perf_counter()
  result = suite_lib.run_suite(
    str(config.suite),
    forward_fn=model.forward_fn(context, batch_size),
    generate_fn=model.generate_fn(context, batch_size),
    tokenizer=model.tokenizer,
    context=context,
    data_root=data_root,
    progress=progress,
    batch_size=batch_size,
    seed=int(config.seed),
    require_gpt2_protocol=bool(config.require_gpt2_protocol),
    split=str(ev.get("split", "")),
    stride=int(ev.get("stride", 0)),
    texts=texts,
  )
  result["context_note"] = note
  result["checkpoint"] = {
    "source": model.source,
    "step": model.step,
    "params": model.num_params,
    "family": model.cfg.family,
    "attention_impl": model.cfg.attention_impl,
    "max_len": model.cfg.max_len,
    "generation_prompts_truncated": model.truncated_prompts,
  }
  result["total_seconds"] = time.perf_counter() - t0
  return result


def _header(label: str, result: dict) -> str:
  c = result["checkpoint"]
  step = f", step {c['step']}" if c["step"] is not None else ""
  return (
    f"# Evaluation of `{label}`{step}\n\n{c['params']:,} parameters, family `{c['family']}`, "
    f"{result['total_seconds']:.1f} s; generation prompts left-truncated: "
    f"{c['generation_prompts_truncated']}\n"
    + (f"\nNote: {result['context_note']}.\n" if result.get("context_note") else "")
  )


def run(config, workdir: str | Path) -> dict[str, Any]:
  checkpoints = [s.strip() for s in str(config.checkpoint).split(",") if s.strip()]
  stages = parse_stages(str(config.stages))
  if not checkpoints and not stages:
    raise ValueError(
      "nothing to evaluate: pass --config.checkpoint=<run directory> (comma-separated for several) "
      "or --config.stages=pretrain=runs/a,sft=runs/b"
    )
  if str(config.suite) not in suite_lib.SUITES:
    raise ValueError(f"config.suite={config.suite!r} is not valid; choose one of {sorted(suite_lib.SUITES)}")
  ev = config.get("eval") or {}
  if str(ev.get("split", "")) not in ("", "test", "valid"):
    raise ValueError(f"config.eval.split={ev.split!r} is not valid; choose 'test' or 'valid' ('' = the suite's)")
  if int(ev.get("stride", 0)) < 0:
    raise ValueError(f"config.eval.stride={ev.stride} must be >= 0 (0 = the context: non-overlapping windows)")
  if str(ev.get("text", "")).strip():
    perplexity.load_text_files(str(ev.text), max_chars=1)  # a bad path fails before any model is loaded
  data_root = resolve_data_root(str(config.data_root))
  workdir = paths.path(workdir)  # local or gs://
  workdir.mkdir(parents=True, exist_ok=True)

  results: dict[str, dict] = {}
  for path in dict.fromkeys(checkpoints + list(stages.values())):  # each checkpoint once, in order
    model = load_eval_model(path, tokenizer_cfg=config.tokenizer.to_dict(), attention_impl=str(config.attention_impl))
    print(f"evaluating {path} ({model.num_params:,} parameters, tokenizer {model.tokenizer.identity})", flush=True)
    results[path] = evaluate_model(model, config, data_root)

  sections = [_header(label, r) + "\n" + suite_lib.to_markdown(r) for label, r in results.items()]
  out: dict[str, Any] = {
    "suite": str(config.suite),
    "data_root": str(data_root) if data_root else None,
    "checkpoints": results,
  }
  if stages:
    per_stage = {name: results[path] for name, path in stages.items()}
    sections.append("# Stages\n\n" + stage_table_lib.stage_table(per_stage))
    out["stages"] = {"paths": stages, "deltas": stage_table_lib.stage_deltas(per_stage)}
  markdown = "\n".join(sections)
  if jax.process_index() == 0:  # every process evaluated the same; one writes
    (workdir / "eval.json").write_text(json.dumps(_jsonable(out), indent=2, sort_keys=False, allow_nan=True))
    (workdir / "eval.md").write_text(markdown)
  print(markdown, flush=True)
  return out

"""Pretraining: tokenizer -> packed, shuffled batches -> the shared loop -> a sample at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax

from modernlm_jax import paths
from modernlm_jax.jobs.common import run_tokenizer
from modernlm_jax.model import ModelConfig
from modernlm_jax.train.init_from import make_init_params_fn
from modernlm_jax.train.loop import StageData, train
from modernlm_jax.train.trackers import log_sample


def pretrain_stage(config, workdir) -> StageData:
  from modernlm_jax.data.pipeline import make_eval_batches, make_train_iterator

  tok = run_tokenizer(config, workdir)
  it = make_train_iterator(
    config.data,
    tok,
    seed=int(config.seed),
    global_batch_size=int(config.train.batch_size),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  evals = make_eval_batches(
    config.data, tok, batch_size=int(config.train.batch_size), seq_len=int(config.data.seq_len)
  )[: int(config.train.eval_batches)]
  if not evals:
    raise ValueError(
      f"the validation split of {config.data.source!r} produced no batch of "
      f"{config.train.batch_size}×{config.data.seq_len} tokens; lower train.batch_size or data.seq_len, "
      "or raise data.val_tokens"
    )
  return StageData(train_iter=it, eval_batches=evals, tokenizer=tok)


def print_sample(config, params, tokenizer) -> str:
  from modernlm_jax.generate import sample_from_config

  s = config.sample
  cfg = ModelConfig.from_dict(config.model)
  prompt = tokenizer.encode(str(s.prompt)) or [tokenizer.eos_id]
  out = sample_from_config(params, cfg, s, prompt, eos_id=tokenizer.eos_id, seed=int(config.seed))
  text = str(s.prompt) + tokenizer.decode(out)
  print(f"sample: {text!r}", flush=True)
  return text


def run(config, workdir: str | Path, stage: StageData | None = None) -> dict:
  stage = stage or pretrain_stage(config, workdir)
  init_fn = make_init_params_fn(config.init_from, config.model.to_dict()) if config.init_from else None
  final = train(config, workdir, stage, init_params_fn=init_fn)
  params = final.pop("params")
  if jax.process_index() == 0:
    final["sample"] = print_sample(config, params, stage.tokenizer)
    log_sample(workdir, final["sample"], int(config.train.steps))  # to the trackers too (W&B, Trackio, TensorBoard)
    summary = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}
    (paths.path(workdir) / "final_metrics.json").write_text(json.dumps(summary, indent=2))
    logging.info("final metrics: %s", summary)
  return final

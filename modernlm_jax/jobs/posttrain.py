"""Post-training stages (SFT, DPO) on the shared loop, started from an earlier run (`config.init_from`).

The tokenizer is the init_from run's own: its SentencePiece model (trained into
`<run>/tokenizer/` by pretraining) is reused and copied into this stage's workdir, so the next stage
finds it there too, and its identity must equal the one stored in the init_from checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax

from modernlm_jax import paths
from modernlm_jax.data import posttrain_pipeline as ptp
from modernlm_jax.data.formats import alpaca_prompt
from modernlm_jax.data.tokenizers import SP_MODEL_FILE, SP_SETTINGS_FILE, build_tokenizer, check_vocab_fits
from modernlm_jax.model import ModelConfig
from modernlm_jax.train.init_from import InitFromError, make_init_params_fn, read_meta
from modernlm_jax.train.loop import StageData, train
from modernlm_jax.train.registry import make_objective

DATA_KIND = {"tokens": "sft", "pairs": "dpo"}  # objective.batch_kind -> post-training data pipeline


def _run_dirs(init_from: Path) -> list[Path]:
  """The directories a run's files may be in: the path itself, or the run above a checkpoint step."""
  return [init_from, init_from.parent, init_from.parent.parent]


def init_from_tokenizer(config, workdir: str | Path, meta: dict, source: str | Path | None = None):
  """The tokenizer of the run at `source` (default: init_from), copied into `workdir`; a clear error when it
  cannot be the same as the one `meta` (that run's checkpoint metadata) records."""
  init_from = paths.path(source if source is not None else config.init_from)
  stored_cfg = (meta.get("config") or {}).get("tokenizer") or {}
  kind = str(meta.get("tokenizer_kind") or stored_cfg.get("kind") or config.tokenizer.kind)
  if kind != config.tokenizer.kind:
    logging.info("tokenizer.kind %r -> %r (the init_from run's)", config.tokenizer.kind, kind)
    config.tokenizer.kind = kind
  if kind == "sentencepiece" and not str(config.tokenizer.path):
    stored_path = str(stored_cfg.get("path") or "")
    candidates = ([paths.path(stored_path)] if stored_path not in ("", ".") else []) + [
      d / "tokenizer" / SP_MODEL_FILE for d in _run_dirs(init_from)
    ]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
      raise InitFromError(
        f"{init_from} uses a SentencePiece tokenizer but none was found (looked at "
        f"{[str(c) for c in candidates]}); set --config.tokenizer.path to the pretraining run's "
        f"tokenizer/{SP_MODEL_FILE}"
      )
    # One process writes the copy (workdirs may be on a shared filesystem); the others read the original.
    config.tokenizer.path = str(_copy_tokenizer(found, paths.path(workdir)) if jax.process_index() == 0 else found)
  elif kind == "gpt2" and not str(config.tokenizer.path) and stored_cfg.get("path"):
    config.tokenizer.path = str(stored_cfg["path"])  # the same vocabulary folder as the init_from run
  tok = build_tokenizer(config.tokenizer, str(workdir))
  stored_identity = meta.get("tokenizer_identity")
  if stored_identity and stored_identity != tok.identity:
    raise InitFromError(
      f"{init_from} was trained with tokenizer {stored_identity!r}, but this stage would use "
      f"{tok.identity!r}; its token ids would mean different text. Leave tokenizer.path empty to reuse the "
      "init_from run's tokenizer, or point it at that run's tokenizer file"
    )
  if not stored_identity:
    logging.warning("%s records no tokenizer identity; using %s as configured", init_from, tok.identity)
  check_vocab_fits(tok, int(config.model.vocab_size))
  return tok


def _copy_tokenizer(model_file: Path, workdir: Path) -> Path:
  dest_dir = workdir / "tokenizer"
  dest = dest_dir / SP_MODEL_FILE
  if str(dest) == str(model_file):
    return dest
  dest_dir.mkdir(parents=True, exist_ok=True)
  if dest.is_file() and dest.read_bytes() != model_file.read_bytes():
    raise InitFromError(f"{dest} already holds a different tokenizer than {model_file}; use a new --workdir")
  paths.write_bytes_atomic(dest, model_file.read_bytes())
  settings = model_file.parent / SP_SETTINGS_FILE
  if settings.is_file():
    paths.write_bytes_atomic(dest_dir / SP_SETTINGS_FILE, settings.read_bytes())
  return dest


def _has_checkpoint(workdir: Path) -> bool:
  directory = workdir / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def data_kind(config) -> str:
  """The post-training pipeline the stage's objective reads: token rows (SFT-style) or preference pairs."""
  return DATA_KIND[make_objective(config).batch_kind]


def posttrain_stage(config, workdir: str | Path, tokenizer) -> tuple[StageData, ptp.PostTrainData]:
  kind = data_kind(config)
  if int(config.data.seq_len) > int(config.model.max_len):
    raise ValueError(
      f"data.seq_len={config.data.seq_len} exceeds the model's max_len={config.model.max_len}; "
      "lower --config.data.seq_len"
    )
  data = ptp.load_posttrain_data(config.data, tokenizer, kind)
  batch = int(config.train.batch_size)
  pack = bool(config.data.pack_sft)
  it = ptp.make_posttrain_iterator(
    data,
    seed=int(config.seed),
    global_batch_size=batch,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    pack=pack,
  )
  evals = ptp.make_posttrain_eval_batches(data, batch_size=batch, pack=pack, max_batches=int(config.train.eval_batches))
  return StageData(train_iter=it, eval_batches=evals, tokenizer=tokenizer), data


def print_instruction_sample(config, params, tokenizer) -> str:
  """Greedy-ish continuation of `config.sample.prompt` as an Alpaca instruction."""
  from modernlm_jax.generate import sample_from_config

  s = config.sample
  cfg = ModelConfig.from_dict(config.model)
  prompt_ids = [tokenizer.eos_id] + tokenizer.encode(alpaca_prompt(str(s.prompt)))
  out = sample_from_config(params, cfg, s, prompt_ids, eos_id=tokenizer.eos_id, seed=int(config.seed))
  text = tokenizer.decode(out)
  print(f"instruction: {s.prompt!r}\nresponse: {text!r}", flush=True)
  return text


def run(config, workdir: str | Path) -> dict:
  """A post-training stage (`config.task` "sft" or "dpo"; the objective decides the data): tokenizer and weights
  from `config.init_from`, then the shared loop."""
  kind = data_kind(config)
  if not str(config.init_from):
    raise InitFromError(
      f"{kind} starts from an earlier run: set --config.init_from=<run directory or checkpoint "
      f"step directory> (e.g. the --workdir of {'pretraining' if kind == 'sft' else 'SFT'})"
    )
  workdir = paths.path(workdir)
  if _has_checkpoint(workdir):
    # Resuming: the loop restores this stage's own state, and its tokenizer copy is in workdir.
    init_fn, source = None, workdir
  else:
    init_fn = make_init_params_fn(str(config.init_from), config.model.to_dict())  # checks path and model first
    source = paths.path(str(config.init_from))
  meta = read_meta(str(source))
  tokenizer = init_from_tokenizer(config, workdir, meta, source)
  stage, data = posttrain_stage(config, workdir, tokenizer)
  final = train(config, workdir, stage, init_params_fn=init_fn)
  params = final.pop("params")
  if jax.process_index() == 0:
    (workdir / "data_stats.json").write_text(json.dumps(data.stats, indent=2))
    if kind == "sft" and int(config.sample.max_new_tokens) > 0:
      final["sample"] = print_instruction_sample(config, params, tokenizer)
    summary_file = workdir / "final_metrics.json"
    # A resumed run that had no steps left keeps the metrics of the run that finished it.
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary.update({k: v for k, v in final.items() if isinstance(v, (int, float, str))})
    summary["init_from"] = str(config.init_from)
    summary_file.write_text(json.dumps(summary, indent=2))
    logging.info("final metrics: %s", summary)
  final["params"] = params
  return final

"""Evaluation of one comparison member: curves, validation loss / bits per byte, probes, tasks.

Evaluation code sees only a jitted `forward_fn(tokens, positions, segment_ids) -> logits`, so every
family is scored by exactly the same code on exactly the same tokens.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from modernlm_jax.compare import results as results_lib
from modernlm_jax.eval import perplexity, statefulness
from modernlm_jax.model import LanguageModel, ModelConfig
from modernlm_jax.train.metrics import read_metrics

log = logging.getLogger(__name__)


def forward_fn_for(params, cfg: ModelConfig) -> Callable:
  """`forward_fn` of the eval package; params are an argument (not baked into the compiled graph)."""
  model = LanguageModel(cfg)

  @jax.jit
  def apply(p, tokens_BT, positions_BT, segment_ids_BT):
    return model.apply({"params": p}, tokens_BT, positions=positions_BT, segment_ids=segment_ids_BT)

  return functools.partial(apply, params)


def probe_context(cfg: ModelConfig, long_context: int) -> int:
  """Attention families are probed within their trained window (as the protocol asks of GPT-2);
  attention-free families carry state past it, so they get `long_context` tokens."""
  return cfg.max_len if cfg.has_attention or cfg.positions == "learned" else max(int(long_context), cfg.max_len)


# --------------------------------------------------------------------------- curves


def curves_from_metrics(member_dir: str | Path, tokens_per_step: int) -> dict:
  """results.json `curves` from a member's metrics.jsonl (train and validation loss vs tokens).

  A resumed run may log a step twice; the last row of each step wins.
  Token positions are the tokens the loop counted from its batches (`tokens_seen`); `tokens_per_step`
  (batch × seq_len) stands in only for rows of older runs that lack it.
  """
  rows = read_metrics(member_dir)
  train: dict[int, dict] = {}
  val: dict[int, dict] = {}
  for r in rows:
    step = r.get("step")
    if step is None:
      continue
    if "val_loss" in r:
      val[int(step)] = r
    elif "loss" in r:
      train[int(step)] = r

  def tokens_at(s: int, row: dict) -> int:
    seen = row.get("tokens_seen", (train.get(s) or {}).get("tokens_seen"))
    return int(seen if seen is not None else s * tokens_per_step)

  steps = sorted(train)
  curves = {
    "tokens": [tokens_at(s, train[s]) for s in steps],
    "train_loss": [_finite_or_none(train[s]["loss"]) for s in steps],
    "val_tokens": [tokens_at(s, val[s]) for s in sorted(val)],
    "val_loss": [_finite_or_none(val[s]["val_loss"]) for s in sorted(val)],
  }
  return curves


def tokens_seen(member_dir: str | Path) -> int | None:
  """The last `tokens_seen` the training loop logged (train or evaluation row)."""
  seen = [int(r["tokens_seen"]) for r in read_metrics(member_dir) if r.get("tokens_seen") is not None]
  return max(seen) if seen else None


def _finite_or_none(x: Any) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


def first_step_metric(member_dir: str | Path, key: str) -> float | None:
  """A training metric at step 1 (e.g. the gradient norm at initialisation)."""
  for r in read_metrics(member_dir):
    if r.get("step") == 1 and key in r:
      return _finite_or_none(r[key])
  return None


# --------------------------------------------------------------------------- validation stream


def validation_texts(data_cfg) -> list[str]:
  """The documents the pipeline uses as the validation split (same rule as the training loop)."""
  from modernlm_jax.data import sources

  if str(data_cfg.val_source):
    spec, split = str(data_cfg.val_source), "all"
  else:
    spec, split = str(data_cfg.source), "validation"
  return sources.load_documents(
    spec, split, jsonl_field=str(data_cfg.jsonl_field), skip_bad_rows=bool(data_cfg.skip_bad_rows)
  )


def validation_stream(data_cfg, tokenizer, max_tokens: int) -> tuple[np.ndarray, int]:
  """Token ids `[eos, doc1..., eos, doc2..., eos, ...]` (at most `max_tokens` + 1) and their byte count.

  Each EOS stands for a one-byte document separator in the byte count, so bits per byte covers the
  text plus the document boundaries the model also has to predict.
  """
  ids: list[int] = [tokenizer.eos_id]
  n_bytes = 0
  for doc in validation_texts(data_cfg):
    piece = list(tokenizer.encode(doc)) + [tokenizer.eos_id]
    room = max_tokens + 1 - len(ids) if max_tokens > 0 else len(piece)
    if room <= 0:
      break
    if len(piece) > room:
      piece = piece[:room]
      n_bytes += len(tokenizer.decode(piece).encode("utf-8"))  # a cut piece never ends in its EOS
      ids += piece
      break
    ids += piece
    n_bytes += len(doc.encode("utf-8")) + 1
  if len(ids) < 2:
    raise ValueError("the validation split produced fewer than 2 tokens; point data.val_source at more text")
  return np.asarray(ids, np.int32), max(n_bytes, 1)


def final_metrics(
  forward_fn: Callable, stream: tuple[np.ndarray, int], *, context: int, batch_size: int, **extra: float | None
) -> dict:
  """`final` entry: loss / perplexity / bits per byte over the validation stream in windows of `context`."""
  ids, n_bytes = stream
  res = perplexity.evaluate_stream(
    forward_fn, ids, context=context, stride=context, batch_size=batch_size, num_bytes=n_bytes
  )
  final = results_lib.final_from_perplexity(res, **extra)
  final["val_tokens_scored"] = int(res["tokens"])
  return final


# --------------------------------------------------------------------------- probes and tasks


def statefulness_entry(forward_fn: Callable, tokenizer, cfg: ModelConfig, probes_cfg) -> dict:
  from modernlm_jax.compare.plan import parse_ints

  ctx = probe_context(cfg, int(probes_cfg.long_context))
  res = statefulness.run_probes(
    forward_fn,
    tokenizer,
    seed=int(probes_cfg.seed),
    num_per_tier=int(probes_cfg.num_per_tier),
    distances=parse_ints(probes_cfg.distances, "probes.distances"),
    num_choices=int(probes_cfg.num_choices),
    context=ctx,
    batch_size=int(probes_cfg.batch_size),
    seeds=[int(probes_cfg.seed) + i for i in range(int(probes_cfg.get("num_seeds", 1)))],
    turns=int(probes_cfg.get("turns", statefulness.DEFAULT_TURNS)),
  )
  entry = results_lib.statefulness_entry(res)
  entry["chance_corrected"] = res["chance_corrected"]
  entry["context"] = ctx
  entry["truncated"] = int(res["truncated"])
  entry["n"] = int(res["n"])
  return entry


def task_accuracies(params, cfg: ModelConfig, forward_fn: Callable, tokenizer, suite: str, data_root: str) -> dict:
  """Headline accuracy per downstream task of the named suite (tasks without data are left out)."""
  from modernlm_jax.eval import suite as suite_lib
  from modernlm_jax.generate import greedy_generate_fn

  result = suite_lib.run_suite(
    suite,
    forward_fn=forward_fn,
    generate_fn=greedy_generate_fn(params, cfg),
    tokenizer=tokenizer,
    context=cfg.max_len,
    data_root=data_root or None,
    progress=log.info,
    ppl_texts={},
    require_gpt2_protocol=False,
  )
  return suite_lib.comparison_entry(result)["tasks"]


def tasks_and_skips(
  params,
  cfg: ModelConfig,
  forward_fn: Callable,
  tokenizer,
  suite: str,
  data_root: str,
  *,
  context: int,
  batch_size: int,
  skip_reason: str = "",
) -> tuple[dict, dict]:
  """(task -> headline accuracy, task -> why it did not run): every task of the suite is in one of them."""
  from modernlm_jax.eval import suite as suite_lib
  from modernlm_jax.generate import greedy_generate_fn

  if not data_root:
    return {}, {t: skip_reason or "no task data folder" for t in suite_lib.task_names()}
  raw = suite_lib.run_tasks(
    suite,
    forward_fn=forward_fn,
    generate_fn=greedy_generate_fn(params, cfg),
    tokenizer=tokenizer,
    context=context,
    data_root=data_root,
    batch_size=batch_size,
    progress=log.info,
    errors_as_skips=True,
  )
  entry = suite_lib.comparison_entry({"tasks": raw})
  return entry["tasks"], entry["skipped"]["tasks"]


def perplexities_and_skips(
  forward_fn: Callable,
  tokenizer,
  corpora: list[str],
  data_root: str,
  *,
  context: int,
  batch_size: int,
  max_chars: int = 0,
  skip_reason: str = "",
) -> tuple[dict, dict]:
  """(corpus -> {bpb, ppl, nats_per_token, tokens, bytes, context}, corpus -> why it was not scored)."""
  from modernlm_jax.eval import suite as suite_lib

  scored, skipped = {}, {}
  for corpus in corpora:
    if not data_root and corpus in perplexity.CORPORA:
      skipped[corpus] = skip_reason or "no data folder"
      continue
    log.info("[compare] perplexity on %s (context %d)", corpus, context)
    r = suite_lib.corpus_perplexity(
      forward_fn,
      tokenizer,
      corpus,
      context=context,
      data_root=data_root or None,
      batch_size=batch_size,
      max_chars=max_chars or None,
    )
    if "skipped" in r:
      skipped[corpus] = str(r["skipped"])
      continue
    scored[corpus] = {
      "bpb": float(r["bits_per_byte"]),
      "ppl": float(r["perplexity"]),
      "nats_per_token": float(r["nats_per_token"]),
      "tokens": int(r["tokens"]),
      "bytes": int(r["bytes"]),
      "context": int(r["context"]),
    }
  return scored, skipped


# --------------------------------------------------------------------------- long context, dialogue, budget


def _shared_data_root(data_root: str) -> Path:
  from modernlm_jax.data.posttrain_pipeline import shared_data_root

  return Path(data_root) if str(data_root) else shared_data_root()


def long_context_docs(lc_cfg, data_cfg, tokenizer, data_root: str = "") -> tuple[list[list[int]], str] | str:
  """Token ids of the long held-out documents, and their description; or the reason there are none.

  `source=auto` reads the shared Gutenberg books; like any other source, only its held-out split is used.
  """
  from modernlm_jax.compare.plan import parse_ints
  from modernlm_jax.data import sources

  need = max(parse_ints(lc_cfg.contexts, "long_context.contexts")) + 1
  spec = str(lc_cfg.source)
  if spec == "auto":
    books = _shared_data_root(data_root) / "gutenberg"
    if not books.is_dir():
      return (
        f"no long documents: {books} is absent; set compare.data_root to the shared data folder or "
        "compare.long_context.source to a data source of long documents"
      )
    spec = f"text@file:{books}/*.txt"
  texts = sources.load_documents(spec, "validation", jsonl_field=str(data_cfg.jsonl_field))
  docs = []
  for text in texts:
    ids = list(tokenizer.encode(text[: need * 16]))  # a prefix is enough: no tokenizer packs 16 bytes per token
    if len(ids) < need:
      ids = list(tokenizer.encode(text))
    if len(ids) >= need:
      docs.append([tokenizer.eos_id, *ids[: need - 1]])
    if len(docs) >= int(lc_cfg.num_docs):
      break
  if not docs:
    return f"no held-out document of {spec} has {need} tokens; lower compare.long_context.contexts"
  return docs, f"{len(docs)} held-out document(s) of {spec}, first {need} tokens each"


def long_context_entry(params, cfg: ModelConfig, tokenizer, lc_cfg, docs: tuple[list[list[int]], str] | str) -> dict:
  """results.json `long_context`: bits/byte at each context per mode, each mode labelled with how it ran."""
  from modernlm_jax.compare.plan import parse_ints
  from modernlm_jax.eval import long_context

  if isinstance(docs, str):
    return {"skipped": docs}
  ids, described = docs

  def bytes_of(targets):
    return len(tokenizer.decode(list(targets)).encode("utf-8"))

  res = long_context.curve(
    params,
    cfg,
    ids,
    contexts=parse_ints(lc_cfg.contexts, "long_context.contexts"),
    window=int(lc_cfg.window),
    sinks=int(lc_cfg.sinks),
    chunk=int(lc_cfg.chunk),
    extrapolate_max=int(lc_cfg.extrapolate_max),
    bytes_of=bytes_of,
  )
  res["documents"] = described
  return res


def dialogue_entry(params, cfg: ModelConfig, forward_fn: Callable, tokenizer, dlg_cfg, dialogues: list | str) -> dict:
  """results.json `dialogue`: reply perplexity / bits per byte and BLEU of greedy replies."""
  from modernlm_jax.eval import dialogue
  from modernlm_jax.generate import greedy_generate_fn

  if isinstance(dialogues, str):
    return {"skipped": dialogues}
  gen = greedy_generate_fn(params, cfg) if bool(dlg_cfg.bleu) else None
  res = dialogue.evaluate(
    forward_fn, gen, tokenizer, dialogues, context=cfg.max_len, max_new_tokens=int(dlg_cfg.max_new_tokens), batch_size=8
  )
  res["source"] = str(dlg_cfg.source)
  res["context"] = cfg.max_len
  return res


def load_dialogue_set(dlg_cfg, data_root: str = "") -> list | str:
  """The held-out dialogues, or the reason there are none (missing data is a skip, never an error)."""
  from modernlm_jax.eval import dialogue

  try:
    return dialogue.load_dialogues(str(dlg_cfg.source), int(dlg_cfg.num_dialogues), _shared_data_root(data_root))
  except FileNotFoundError as e:
    return f"no dialogue data: {e}"

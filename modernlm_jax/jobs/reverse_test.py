"""Reverse test: GPT-2 trained by this framework vs the same GPT-2 trained by an independent reference.

    python -m modernlm_jax.jobs.reverse_test --preset gpt2-tiny --steps 200 --workdir runs/reverse
    python -m modernlm_jax.jobs.reverse_test ... --results runs/cmp/results.json   # also adds the report row

Ours: the `gpt2` preset through the framework's own training loop (train/loop.py: data pipeline, fused
cross-entropy, optax AdamW + clipping + schedule, jitted step). Reference: Hugging Face
`GPT2LMHeadModel` (eager attention, no dropout) trained by a small torch loop written here: torch AdamW
with the same betas / eps / weight decay and the same parameters excluded from decay, the same learning
rate at every step (read from our schedule), global-norm clipping, the same initial weights (exported
through interop/hf_gpt2.py) and the same batches (our pipeline's `batch_at(step)`). Documents are not
isolated (`data.isolate_documents=False`), so both see plain causal rows.

Both training losses are compared at every logged step, then both final models are scored on the same
validation batches and `compare.decision.diagnose_framework` applies the rule (within ±5 % → the
framework is correct; more than 10 % worse → the training loop has bugs). torch and transformers are an
optional extra: `pip install 'modernlm_jax[hf]'`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from modernlm_jax.compare.decision import diagnose_framework
from modernlm_jax.config_base import base_config
from modernlm_jax.model import ModelConfig, init_params

INSTALL_HINT = "the reverse test needs torch and transformers: pip install 'modernlm_jax[hf]'"
log = logging.getLogger(__name__)


def _require_torch():
  try:
    import torch
    import transformers
  except ImportError as e:
    raise SystemExit(f"{INSTALL_HINT} ({e})") from None
  return torch, transformers


def make_config(
  preset: str,
  *,
  steps: int,
  batch_size: int,
  seq_len: int,
  lr: float,
  warmup: int,
  log_every: int,
  source: str,
  tokenizer: str,
  seed: int,
):
  c = base_config(preset)
  if c.model.family != "gpt2":
    raise ValueError(
      f"--preset {preset!r} is not a gpt2-family preset; the reference is GPT2LMHeadModel (e.g. gpt2-tiny)"
    )
  c.seed = seed
  c.mesh.data = 1  # one device, like the single-process torch reference
  c.data.update(
    dict(source=source, seq_len=seq_len, isolate_documents=False, prefetch=0, val_tokens=8 * batch_size * seq_len)
  )
  if tokenizer:
    c.tokenizer.kind = tokenizer
  c.train.update(
    dict(
      steps=steps,
      batch_size=batch_size,
      lr=lr,
      warmup_steps=warmup,
      log_every=log_every,
      eval_every=steps,
      checkpoint_every=steps,
      eval_batches=4,
      tensorboard=False,
      loss_chunk=0,
      async_checkpoint=False,
    )
  )
  if seq_len > int(c.model.max_len):
    raise ValueError(f"--seq-len {seq_len} exceeds the preset's max_len {c.model.max_len}")
  return c


def _own_curve(workdir: Path) -> dict[int, float]:
  from modernlm_jax.train.metrics import read_metrics

  return {int(r["step"]): float(r["loss"]) for r in read_metrics(workdir) if "loss" in r and "step" in r}


def train_ours(config, workdir: Path):
  from modernlm_jax.jobs.pretrain import pretrain_stage
  from modernlm_jax.train.loop import train

  stage = pretrain_stage(config, workdir)
  out = train(config, workdir, stage)
  return out["params"], stage


def _hf_model(params, cfg: ModelConfig, torch, transformers):
  from modernlm_jax.interop.hf_gpt2 import hf_config_from, params_to_hf_state

  hf_cfg = hf_config_from(cfg)
  hf_cfg.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # our model has no dropout
  config = transformers.GPT2Config(**{k: v for k, v in hf_cfg.items() if k not in ("architectures", "dtype")})
  model = (
    transformers.GPT2LMHeadModel(config, attn_implementation="eager")
    if "attn_implementation" in transformers.GPT2LMHeadModel.__init__.__code__.co_varnames
    else transformers.GPT2LMHeadModel(config)
  )
  model.config._attn_implementation = "eager"
  state = {k: torch.from_numpy(np.array(v)) for k, v in params_to_hf_state(params, cfg).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [m for m in missing if not m.endswith(("attn.bias", "attn.masked_bias")) and m != "lm_head.weight"]
  if missing or unexpected:
    raise RuntimeError(f"exported GPT-2 weights did not load: missing {missing}, unexpected {unexpected}")
  return model.float()


def _torch_loss(model, batch, torch):
  inputs = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
  targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))
  positions = torch.from_numpy(np.asarray(batch["positions"], np.int64))
  mask = torch.from_numpy(np.asarray(batch["loss_mask"], np.float32))
  logits = model(input_ids=inputs, position_ids=positions).logits.float()
  nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
  return (nll * mask.reshape(-1)).sum() / mask.sum().clamp(min=1.0)


def train_reference(params, config, batches_at, eval_batches, torch, transformers) -> tuple[dict[int, float], float]:
  """The independent torch loop; returns its training loss per step (1-based) and its final validation loss."""
  from modernlm_jax.train.optim import learning_rate_schedule

  torch.manual_seed(0)
  cfg = ModelConfig.from_dict(config.model)
  model = _hf_model(params, cfg, torch, transformers)
  model.train()
  t = config.train
  decay, no_decay = [], []
  for name, p in model.named_parameters():  # named_parameters yields a tied wte/lm_head tensor once
    is_embedding = name.endswith(("wte.weight", "wpe.weight"))
    (decay if p.ndim >= 2 and (not is_embedding or bool(t.decay_embeddings)) else no_decay).append(p)
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": float(t.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}],
    lr=0.0,
    betas=(float(t.b1), float(t.b2)),
    eps=float(t.eps),
  )
  lrs = np.asarray(jax.vmap(learning_rate_schedule(t))(np.arange(int(t.steps))), np.float64)  # optax counts from 0
  curve = {}
  for step in range(int(t.steps)):
    for g in opt.param_groups:
      g["lr"] = float(lrs[step])
    loss = _torch_loss(model, batches_at(step), torch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if float(t.grad_clip) > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), float(t.grad_clip))
    opt.step()
    curve[step + 1] = float(loss.detach())
  model.eval()
  with torch.no_grad():
    val = float(np.mean([float(_torch_loss(model, b, torch)) for b in eval_batches]))
  return curve, val


def own_val_loss(params, cfg: ModelConfig, eval_batches) -> float:
  from modernlm_jax.model import LanguageModel

  fwd = jax.jit(lambda p, x, pos: LanguageModel(cfg).apply({"params": p}, x, positions=pos))
  losses = []
  for b in eval_batches:
    logits = fwd(params, b["inputs"], b["positions"])
    lp = jax.nn.log_softmax(logits, axis=-1)
    nll = -np.take_along_axis(np.asarray(lp), np.asarray(b["targets"])[..., None], axis=-1)[..., 0]
    m = np.asarray(b["loss_mask"], np.float64)
    losses.append(float((nll * m).sum() / max(m.sum(), 1.0)))
  return float(np.mean(losses))


def run(args) -> dict[str, Any]:
  torch, transformers = _require_torch()
  from modernlm_jax.data.pipeline import make_train_iterator

  torch.set_num_threads(max(1, int(args.threads)))
  workdir = Path(args.workdir)
  if (workdir / "ours" / "checkpoints").exists():
    raise SystemExit(f"{workdir}/ours already holds a run; pass a fresh --workdir")
  config = make_config(
    args.preset,
    steps=args.steps,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    lr=args.lr,
    warmup=args.warmup,
    log_every=args.log_every,
    source=args.source,
    tokenizer=args.tokenizer,
    seed=args.seed,
  )
  cfg = ModelConfig.from_dict(config.model)
  t0 = time.perf_counter()
  own_params, stage = train_ours(config, workdir / "ours")
  own_s = time.perf_counter() - t0
  own = _own_curve(workdir / "ours")
  it = make_train_iterator(config.data, stage.tokenizer, seed=int(config.seed), global_batch_size=int(args.batch_size))
  try:
    t0 = time.perf_counter()
    ref, ref_val = train_reference(
      init_params(cfg, int(config.seed)), config, it.batch_at, stage.eval_batches, torch, transformers
    )
    ref_s = time.perf_counter() - t0
  finally:
    it.close()
  steps = sorted(s for s in own if s in ref)
  rel = [abs(own[s] - ref[s]) / ref[s] for s in steps]
  own_val = own_val_loss(own_params, cfg, stage.eval_batches)
  entry = {
    "preset": args.preset,
    "steps": int(args.steps),
    "batch_size": int(args.batch_size),
    "seq_len": int(args.seq_len),
    "logged_steps": steps,
    "own_curve": [own[s] for s in steps],
    "reference_curve": [ref[s] for s in steps],
    "rel_diff": rel,
    "max_rel_diff": max(rel) if rel else None,
    "own_loss": own_val,
    "reference_loss": ref_val,
    "val_rel_diff": (own_val - ref_val) / ref_val,
    "diagnosis": diagnose_framework(own_val, ref_val),
    "reference": f"transformers {transformers.__version__} GPT2LMHeadModel + torch {torch.__version__} AdamW loop",
    "seconds": {"ours": round(own_s, 1), "reference": round(ref_s, 1)},
  }
  if any(not math.isfinite(x) for x in entry["own_curve"] + entry["reference_curve"]):
    entry["diagnosis"] = "a loss diverged (non-finite): training loop has bugs or the learning rate is too high"
  (workdir / "reverse_test.json").write_text(json.dumps(entry, indent=2))
  if args.results:
    _add_to_results(Path(args.results), entry)
  return entry


def _add_to_results(path: Path, entry: dict) -> None:
  from modernlm_jax.compare import report as report_lib
  from modernlm_jax.compare import results as results_lib

  results = results_lib.load(path)
  results["reverse_test"] = entry
  results_lib.save(results, path)
  print(f"report: {report_lib.write_report(results, path.parent)}")


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="gpt2-tiny")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--batch-size", type=int, default=4)
  ap.add_argument("--seq-len", type=int, default=64)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--warmup", type=int, default=20)
  ap.add_argument("--log-every", type=int, default=10)
  ap.add_argument("--source", default="builtin", help="data source spec (default: the embedded corpus)")
  ap.add_argument("--tokenizer", default="", help="tokenizer kind (default: the preset's); 'bytes' needs no training")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (more than the free cores makes it crawl)")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--results", default="", help="a comparison's results.json: add the reverse_test row, re-render")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  e = run(args)
  print(
    json.dumps(
      {k: e[k] for k in ("preset", "steps", "max_rel_diff", "own_loss", "reference_loss", "diagnosis", "seconds")}
    )
  )
  for s, a, b, r in zip(e["logged_steps"], e["own_curve"], e["reference_curve"], e["rel_diff"]):
    print(f"step {s:5d}  ours {a:.4f}  reference {b:.4f}  rel diff {r:.3%}")


if __name__ == "__main__":
  main()

"""The matched comparison: train every (family × scale × seed), evaluate, measure, fit, report.

`python -m modernlm_jax.main --config=configs/compare.py:<preset> --workdir=DIR` writes

    DIR/tokenizer/               the one tokenizer every member uses (SentencePiece is trained once)
    DIR/runs/<arm>-<scale>-s<seed>/   each member's pretraining run (checkpoints, metrics.jsonl)
    DIR/results.json             every measured number (schema: modernlm_jax.compare.results)
    DIR/report.md, DIR/*.png     regenerated from results.json alone (modernlm_jax.compare.report)

Members share the data source, token budget, schedule and batch order (see `compare_plan`).
Resumable: results.json is saved after every member; a member whose last checkpoint is at the
configured step and whose entry is "ok" is skipped, one trained but not evaluated is only
evaluated, one interrupted mid-training resumes from its checkpoint. A member that raises is
recorded as failed (error string, traceback in its run folder's error.txt) and the rest continue.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np

from modernlm_jax import paths
from modernlm_jax.compare import decision, member_eval
from modernlm_jax.compare import inference as inference_lib
from modernlm_jax.compare import plan as plan_lib
from modernlm_jax.compare import report as report_lib
from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare import smoke as smoke_lib
from modernlm_jax.compare.plan import Member
from modernlm_jax.model import ModelConfig, scales
from modernlm_jax.provenance import record_command
from modernlm_jax.train.metrics import read_metrics

log = logging.getLogger(__name__)
RESULTS_NAME = "results.json"


def member_dir(workdir: Path, member: Member) -> Path:
  return workdir / "runs" / member.name


def final_checkpoint_step(run_dir: Path) -> int | None:
  """Newest committed checkpoint step (orbax commits a step by renaming its folder to the number)."""
  root = run_dir / "checkpoints"
  steps = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
  return max(steps) if steps else None


def _load_or_new(path: Path, proto: dict, members: list[Member]) -> dict:
  results = results_lib.new_results(proto)
  if not path.is_file():
    return results
  old = results_lib.load(path)
  changed = {
    k: (old["protocol"].get(k), proto.get(k))
    for k in plan_lib.PROTOCOL_IDENTITY_KEYS
    if old["protocol"].get(k) != proto.get(k)
  }
  if changed:
    raise ValueError(
      f"{path} holds a comparison with a different protocol (saved, now): {changed}. Nothing was "
      "changed; use a new --workdir, or the saved settings to resume."
    )
  wanted = {(m.arm, m.scale, m.seed) for m in members}
  for run in old["runs"]:
    if results_lib.run_key(run) in wanted:
      results_lib.add_run(results, run)
  if old.get("smoke"):
    results["smoke"] = old["smoke"]
  return results


def _find_run(results: dict, member: Member) -> dict | None:
  key = (member.arm, member.scale, member.seed)
  return next((r for r in results["runs"] if results_lib.run_key(r) == key), None)


def _param_count(config, member: Member) -> int:
  try:
    return scales.count_params(plan_lib.model_config(config, member))["total"]
  except Exception:  # noqa: BLE001 - a broken override: count the unmodified family so the entry stays valid
    return scales.count_params(scales.preset(f"{member.family}-{member.scale}"))["total"]


def _check_vocab(config, members: list[Member], tokenizers: dict) -> None:
  from modernlm_jax.data.tokenizers import check_vocab_fits

  for m in members:
    if m.arm in plan_lib.variant_names(config):
      continue  # a variant's model overrides are checked (and may fail) inside its own run
    check_vocab_fits(tokenizers[m.scale][0], plan_lib.model_config(config, m).vocab_size)


class _Context:
  """What members of one comparison share: config, tokenizers, validation streams, inference plans."""

  def __init__(self, config, workdir: Path, members: list[Member], tokenizers: dict):
    self.config, self.workdir, self.tokenizers = config, workdir, tokenizers
    self.data_root, self.data_root_reason = plan_lib.resolve_data_root(config)
    self.streams: dict[str, tuple[np.ndarray, int]] = {}
    self.long_docs: dict[str, Any] = {}  # tokenizer identity -> long-context documents (or why there are none)
    self.dialogues: Any = None
    self.inference_plans: dict[str, dict] = {}
    for scale in dict.fromkeys(m.scale for m in members):
      cfgs = {}
      for m in (m for m in members if m.scale == scale):
        try:
          cfgs[m.arm] = plan_lib.model_config(config, m)
        except ValueError:
          pass  # the member fails on its own when it runs
      self.inference_plans[scale] = inference_lib.scale_plan(cfgs, config.compare.inference)

  def stream(self, tokenizer) -> tuple[np.ndarray, int]:
    if tokenizer.identity not in self.streams:
      self.streams[tokenizer.identity] = member_eval.validation_stream(
        self.config.data, tokenizer, int(self.config.data.val_tokens)
      )
    return self.streams[tokenizer.identity]


def _train_member(ctx: _Context, member: Member, stop_at: int | None = None):
  from modernlm_jax.jobs.pretrain import pretrain_stage
  from modernlm_jax.train.loop import train

  tok, tok_cfg = ctx.tokenizers[member.scale]
  mcfg = plan_lib.member_config(ctx.config, member, tok_cfg)
  run_dir = member_dir(ctx.workdir, member)
  stage = pretrain_stage(mcfg, run_dir)
  start = final_checkpoint_step(run_dir) or 0
  log.info("[compare] %s: training steps %d..%d in %s", member.name, start, int(stop_at or mcfg.train.steps), run_dir)
  out = train(mcfg, run_dir, stage, stop_at=stop_at)
  return mcfg, out["params"], tok, getattr(stage.train_iter, "tokens_per_epoch", None)


def _evaluate_member(ctx: _Context, member: Member, mcfg, params, tok, tokens_per_epoch: int | None) -> dict:
  from modernlm_jax.data.pipeline import scheduled_tokens
  from modernlm_jax.train.flops import flops_per_token

  c = ctx.config.compare
  run_dir = member_dir(ctx.workdir, member)
  model_cfg = ModelConfig.from_dict(mcfg.model)
  seq_len, batch = int(mcfg.data.seq_len), int(mcfg.train.batch_size)
  budget = scheduled_tokens(mcfg.data, int(mcfg.train.steps), batch)
  curves = member_eval.curves_from_metrics(run_dir, batch * seq_len)
  step_times = [r["step_time_s"] for r in read_metrics(run_dir) if r.get("step", 0) > 1 and "step_time_s" in r]
  fwd = member_eval.forward_fn_for(params, model_cfg)
  context = min(seq_len, model_cfg.max_len)  # the context it was trained at: later positions never trained
  seen = member_eval.tokens_seen(run_dir) or budget
  data = {
    "tokens_seen": int(seen),
    "tokens_per_epoch": tokens_per_epoch,
    "epochs": None if not tokens_per_epoch else seen / tokens_per_epoch,
  }
  log.info("[compare] %s: validation loss / bits per byte", member.name)
  final = member_eval.final_metrics(
    fwd,
    ctx.stream(tok),
    context=context,
    batch_size=int(c.eval_batch_size),
    grad_norm_init=member_eval.first_step_metric(run_dir, "grad_norm"),
    train_loss_final=next((l for l in reversed(curves["train_loss"]) if l is not None), None),
    train_flops=flops_per_token(model_cfg, seq_len) * budget,
    step_time_s=float(np.median(step_times)) if step_times else None,
  )
  entry: dict[str, Any] = {"curves": curves, "final": final, "tokenizer": tok.identity, "data": data}
  skipped: dict[str, dict] = {}
  corpora = plan_lib.parse_list(c.perplexity, "perplexity") if str(c.perplexity).strip() else []
  if corpora:
    entry["perplexity"], skipped["perplexity"] = member_eval.perplexities_and_skips(
      fwd,
      tok,
      corpora,
      ctx.data_root,
      context=context,
      batch_size=int(c.eval_batch_size),
      max_chars=int(c.perplexity_max_chars),
      skip_reason=ctx.data_root_reason,
    )
  if bool(c.probes.enabled):
    log.info("[compare] %s: statefulness probes", member.name)
    entry["statefulness"] = member_eval.statefulness_entry(fwd, tok, model_cfg, c.probes)
  if str(c.suite):
    log.info("[compare] %s: evaluation suite %r", member.name, str(c.suite))
    entry["tasks"], skipped["tasks"] = member_eval.tasks_and_skips(
      params,
      model_cfg,
      fwd,
      tok,
      str(c.suite),
      ctx.data_root,
      context=context,
      batch_size=int(c.eval_batch_size),
      skip_reason=ctx.data_root_reason,
    )
  else:
    skipped["tasks"] = {"all": "not run: compare.suite is empty (set --config.compare.suite=quick or full)"}
  entry["skipped"] = {k: v for k, v in skipped.items() if v}
  if bool(c.inference.enabled):
    plan = ctx.inference_plans[member.scale][member.arm]
    log.info(
      "[compare] %s: inference protocol (%s)", member.name, "own process" if plan["memory"] else "in process, no memory"
    )
    entry["inference"] = _measure_inference(params, model_cfg, plan)
  run = results_lib.make_run(member.arm, member.scale, member.seed, scales.count_params(model_cfg)["total"], **entry)
  run.update(_protocol_extensions(ctx, member, params, model_cfg, fwd, tok))
  return run


def _protocol_extensions(ctx: _Context, member: Member, params, model_cfg: ModelConfig, fwd, tok) -> dict:
  """The budget a member trained on, its long-context curve and its conversational scores."""
  c = ctx.config.compare
  out: dict[str, Any] = {"budget": plan_lib.budget_entry(ctx.config, member)}
  if bool(c.long_context.enabled):
    if tok.identity not in ctx.long_docs:
      ctx.long_docs[tok.identity] = member_eval.long_context_docs(
        c.long_context, ctx.config.data, tok, str(c.data_root)
      )
    log.info("[compare] %s: long-context curve", member.name)
    out["long_context"] = member_eval.long_context_entry(
      params, model_cfg, tok, c.long_context, ctx.long_docs[tok.identity]
    )
  if bool(c.dialogue.enabled):
    if ctx.dialogues is None:
      ctx.dialogues = member_eval.load_dialogue_set(c.dialogue, str(c.data_root))
    log.info("[compare] %s: conversational set", member.name)
    out["dialogue"] = member_eval.dialogue_entry(params, model_cfg, fwd, tok, c.dialogue, ctx.dialogues)
  return out


def _run_member(ctx: _Context, member: Member) -> dict:
  run_dir = member_dir(ctx.workdir, member)
  try:
    mcfg, params, tok, tokens_per_epoch = _train_member(ctx, member)
    return _evaluate_member(ctx, member, mcfg, params, tok, tokens_per_epoch)
  except Exception as e:  # noqa: BLE001 - one member's crash must not stop the comparison
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text(traceback.format_exc())
    log.error("[compare] %s failed: %s: %s (traceback in %s)", member.name, type(e).__name__, e, run_dir / "error.txt")
    return results_lib.make_run(
      member.arm, member.scale, member.seed, _param_count(ctx.config, member), error=f"{type(e).__name__}: {e}"[:2000]
    )


def _measure_inference(params, model_cfg: ModelConfig, plan: dict) -> dict:
  """The inference entry: in a fresh process when the plan measures memory (its peak is then the member's own)."""
  measured = (
    inference_lib.measure_in_subprocess(params, model_cfg, plan)
    if plan["memory"]
    else inference_lib.measure(params, model_cfg, plan)
  )
  return inference_lib.entry(measured, plan)


def _remeasure_inference(ctx: _Context, members: list[Member], results: dict) -> None:
  """compare.remeasure=inference: the inference protocol again for every finished member, from its final
  checkpoint, replacing only its `inference` entry (after a fix to the measurement; nothing is retrained)."""
  from modernlm_jax.train.checkpoint import load_run_params, locate_run

  if not bool(ctx.config.compare.inference.enabled):
    raise ValueError("compare.remeasure=inference needs compare.inference.enabled=True")
  for i, member in enumerate(members):
    prior = _find_run(results, member)
    run_dir = member_dir(ctx.workdir, member)
    if prior is None or prior["status"] != "ok":
      log.warning("[compare] %d/%d %s: no successful run recorded, not remeasured", i + 1, len(members), member.name)
      continue
    params, meta, step = load_run_params(locate_run(run_dir, key="compare.remeasure"), key="compare.remeasure")
    if step != plan_lib.member_steps(ctx.config, member):
      raise ValueError(f"{run_dir} holds step {step}, not the final step: finish the comparison before remeasuring")
    model_cfg = ModelConfig.from_dict(meta["model"])
    plan = ctx.inference_plans[member.scale][member.arm]
    log.info("[compare] %d/%d %s: remeasuring the inference protocol", i + 1, len(members), member.name)
    prior["inference"] = _measure_inference(params, model_cfg, plan)


# --------------------------------------------------------------------------- smoke protocol


def _smoke_group(members: list[Member]) -> list[Member]:
  """The members the smoke protocol checks: every arm at the first scale and seed."""
  scale, seed = members[0].scale, members[0].seed
  return [m for m in members if m.scale == scale and m.seed == seed]


def _smoke_first(ctx: _Context, members: list[Member], results: dict) -> dict | None:
  """The smoke protocol, run BEFORE full training (as the protocol asks).

  - overfit: a fresh model of each arm memorises the first rows of the shared first batch;
  - gradient norm at initialisation: the first training step of each arm's member run;
  - 1 % data: each arm's member run is trained for the first `data_fraction` of the budget (at least
    `min_points` logged points) and stops with a checkpoint, so full training later resumes from it
    and nothing is trained twice.
  """
  from modernlm_jax.data.pipeline import make_train_iterator, scheduled_tokens

  s = ctx.config.compare.smoke
  group = _smoke_group(members)
  scale, seed = group[0].scale, group[0].seed
  arms = sorted(m.arm for m in group)
  old = results.get("smoke") or {}
  if old.get("scale") == scale and sorted(old.get("arms") or []) == arms:
    log.info("[compare] smoke protocol already recorded for %s", arms)
    old["gate"] = bool(s.gate)
    return old
  tok, tok_cfg = ctx.tokenizers[scale]
  any_cfg = plan_lib.member_config(ctx.config, group[0], tok_cfg)
  it = make_train_iterator(any_cfg.data, tok, seed=seed, global_batch_size=int(any_cfg.train.batch_size))
  try:
    batch = smoke_lib.overfit_batch(
      it.batch_at(0), int(s.overfit_rows), int(s.overfit_len) or int(any_cfg.data.seq_len)
    )
  finally:
    it.close()
  steps, batch_size = int(ctx.config.train.steps), int(ctx.config.train.batch_size)
  budget = scheduled_tokens(ctx.config.data, steps, batch_size)
  stop = smoke_lib.fraction_steps(steps, float(s.data_fraction), int(s.min_points), int(ctx.config.train.log_every))
  overfits, grads, fractions, errors, used = {}, {}, {}, {}, 0.0
  for m in group:
    log.info("[compare] smoke: overfitting %s on %d tokens", m.arm, batch["inputs"].size)
    try:
      r = smoke_lib.overfit(
        plan_lib.member_config(ctx.config, m, tok_cfg), batch, steps=int(s.overfit_steps), lr=float(s.overfit_lr)
      )
      if np.isfinite(r["final_loss"]) and np.isfinite(r["first_loss"]):
        overfits[m.arm] = r
      else:
        errors[m.arm] = f"overfit diverged (first loss {r['first_loss']}, final {r['final_loss']})"
    except Exception as e:  # noqa: BLE001 - recorded, never fatal
      log.error("[compare] smoke overfit of %s failed: %s", m.arm, e)
      errors[m.arm] = f"overfit: {type(e).__name__}: {e}"[:500]
    run_dir = member_dir(ctx.workdir, m)
    try:
      if (final_checkpoint_step(run_dir) or 0) < stop:
        log.info(
          "[compare] smoke: %s trains its first %d steps (the %g data-fraction test)",
          m.name,
          stop,
          float(s.data_fraction),
        )
        _train_member(ctx, m, stop_at=stop)
    except Exception as e:  # noqa: BLE001 - the member fails again (and is recorded) when it trains in full
      log.error("[compare] smoke training of %s failed: %s", m.name, e)
      errors[m.arm] = (errors.get(m.arm, "") + f"; data fraction: {type(e).__name__}: {e}").strip("; ")[:1000]
      continue
    g = member_eval.first_step_metric(run_dir, "grad_norm")
    if g is not None:
      grads[m.arm] = g
    curve, frac = smoke_lib.data_fraction_curve(
      member_eval.curves_from_metrics(run_dir, batch_size * int(ctx.config.data.seq_len)),
      budget,
      float(s.data_fraction),
      int(s.min_points),
    )
    if curve["tokens"]:
      fractions[m.arm], used = curve, max(used, frac)
  entry = smoke_lib.smoke_entry(
    scale,
    overfit_results=overfits,
    overfit_size=int(batch["inputs"].size),
    grad_norms=grads,
    fraction_curves=fractions,
    fraction_used=used,
  )
  entry.update(arms=arms, gate=bool(s.gate), errors=errors)
  return entry


# --------------------------------------------------------------------------- entry point


def run(config, workdir: str | Path) -> dict:
  """Runs (or resumes) the comparison in `workdir`; returns the results dict (also in results.json)."""
  workdir = paths.path(workdir)  # local (absolute) or gs://
  members = plan_lib.plan(config)  # bad names fail here, before anything is trained
  plan_lib.check_data_source(config)  # and a missing corpus
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    remeasure = str(config.compare.get("remeasure", ""))
    # COMMAND: the command line and commit, published with results.json.
    record_command(workdir, note=f"remeasure={remeasure}" if remeasure else "")
  t0 = time.perf_counter()
  scale_names = list(dict.fromkeys(m.scale for m in members))
  tokenizers = plan_lib.build_shared_tokenizers(config, workdir, scale_names)
  _check_vocab(config, members, tokenizers)
  results_path = workdir / RESULTS_NAME
  results = _load_or_new(results_path, plan_lib.protocol(config, tokenizers), members)
  ctx = _Context(config, workdir, members, tokenizers)
  is_main = jax.process_index() == 0
  if str(config.compare.get("remeasure", "")):
    _remeasure_inference(ctx, members, results)
    if is_main:
      results_lib.save(results, results_path)
      _log_summary(results, _write_report(results, workdir), time.perf_counter() - t0)
    return results
  if bool(config.compare.smoke.enabled):
    smoke = _smoke_first(ctx, members, results)
    if smoke:
      results["smoke"] = smoke
      failed = [c["name"] for c in decision.smoke_checks(smoke) if c["passed"] is False]
      smoke["stopped_before_training"] = bool(failed and smoke["gate"])
      if is_main:
        results_lib.save(results, results_path)
      if smoke["stopped_before_training"]:
        log.error(
          "[compare] smoke check(s) failed: %s. Verdict FIX FIRST; full training not started. Fix them, or "
          "rerun with --config.compare.smoke.gate=False to go on anyway.",
          ", ".join(failed),
        )
        if is_main:
          report = _write_report(results, workdir)
          _log_summary(results, report, time.perf_counter() - t0)
        return results
      if failed:
        log.warning("[compare] smoke check(s) failed: %s; going on because compare.smoke.gate=False", ", ".join(failed))
  for i, member in enumerate(members):
    prior = _find_run(results, member)
    finished = final_checkpoint_step(member_dir(workdir, member)) == plan_lib.member_steps(config, member)
    if finished and prior is not None and prior["status"] == "ok":
      log.info("[compare] %d/%d %s: finished earlier, skipped", i + 1, len(members), member.name)
      continue
    log.info("[compare] %d/%d %s", i + 1, len(members), member.name)
    results_lib.add_run(results, _run_member(ctx, member))
    if is_main:
      results_lib.save(results, results_path)
  if is_main:
    results_lib.save(results, results_path)
    report = _write_report(results, workdir)
    _log_summary(results, report, time.perf_counter() - t0)
  return results


def _write_report(results: dict, workdir) -> Path:
  """The report and its figures, written locally (matplotlib writes local files) and then mirrored into a
  gs:// workdir; a local workdir is written in place."""
  mirror = paths.LocalMirror(workdir)
  if mirror.remote:
    for name in report_lib.FIGURES.values():
      (workdir / name).unlink(missing_ok=True)  # a stale figure must not outlive a report that says it is missing
  local_report = report_lib.write_report(results, mirror.local)
  mirror.close()
  return workdir / local_report.name


def _log_summary(results: dict, report: Path, seconds: float) -> None:
  base = results_lib.baseline_family(results)
  for fam in results_lib.families(results):
    if fam != base:
      v = decision.verdict_from_results(results, fam, base)
      log.info("[compare] verdict %s vs %s at %s: %s", fam, base, v["scale"], v["decision"])
  failed = results_lib.failed_runs(results)
  if failed:
    log.warning(
      "[compare] %d member run(s) failed: %s",
      len(failed),
      ", ".join(f"{r['family']}-{r['scale']}-s{r['seed']}" for r in failed),
    )
  log.info("[compare] report: %s (%.0f s)", report, seconds)
  print(f"comparison report: {report}", flush=True)

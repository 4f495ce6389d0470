"""The one training loop pretraining, SFT and DPO share: restore, step, log, evaluate, checkpoint.

Stages differ only by their objective (`config.objective`, looked up in `train/registry.py`: its batch kind,
whether it needs a frozen reference, whether its loss is a perplexity) and the batches the stage feeds. The host never
waits on the device inside the loop: step s's metrics are read after step s+1 was dispatched, and
batches are prepared and placed on device by a background thread.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from modernlm_jax import paths
from modernlm_jax.model import ModelConfig, init_params
from modernlm_jax.model.tpu_attention import kernel_mesh_context
from modernlm_jax.train import checkpoint as ckpt_lib
from modernlm_jax.train import mesh as mesh_lib
from modernlm_jax.train import preemption, trace_summary, workdir_lock
from modernlm_jax.train.flops import device_peak_flops, flops_per_token
from modernlm_jax.train.mesh import process_rows
from modernlm_jax.train.metrics import MetricWriter, ProgressLine, truncate_metrics
from modernlm_jax.train.optim import learning_rate_schedule, make_optimizer
from modernlm_jax.train.prefetch import DevicePrefetcher, to_global
from modernlm_jax.train.registry import make_objective
from modernlm_jax.train.step import (
  create_state,
  jit_train_step,
  make_eval_step,
  make_train_step,
  state_shardings,
)


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class StageData:
  """What a stage feeds the loop: a checkpointable train iterator, fixed eval batches, the tokenizer."""

  train_iter: Any  # __next__ -> host batch dict; get_state()/set_state()
  eval_batches: list[dict]
  tokenizer: Any


def _host_metrics(pending: list) -> list[dict[str, float]]:
  """The device metrics of several steps, fetched in one transfer."""
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get([p[1] for p in pending])]


def evaluate(eval_step, params, batches, ref_params=None, *, reports_perplexity: bool = True) -> dict[str, float]:
  """Weighted means of the objective's sums over `batches`, as `val_<name>`; `val_ppl` only when the loss
  is a per-token negative log-likelihood (not for DPO, whose loss is a per-pair preference loss)."""
  totals: dict[str, float] = {}
  weight = 0.0
  for b in batches:
    sums, w = eval_step(params, b, ref_params)
    sums, w = jax.device_get((sums, w))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    weight += float(w)
  out = {f"val_{k}": v / max(weight, 1.0) for k, v in totals.items()}
  if "val_loss" in out and reports_perplexity:
    out["val_ppl"] = math.exp(min(out["val_loss"], 50.0))
  return out


def _init_or_restore(config, model_cfg, optimizer, mesh, ckpt, stage: StageData, init_params_fn, with_ref: bool):
  abstract = jax.eval_shape(lambda: create_state(model_cfg, optimizer, config.seed, with_reference=with_ref))
  shardings = state_shardings(abstract, model_cfg, mesh)
  if ckpt.latest_step() is not None:
    state, data_state, meta, step = ckpt.restore(ckpt_lib.abstract_with_shardings(abstract, shardings))
    if data_state:
      stage.train_iter.set_state(data_state)
    logging.info("resumed from checkpoint step %d in %s", step, ckpt.directory)
    return state, shardings, step
  state = jax.jit(
    lambda: create_state(model_cfg, optimizer, config.seed, with_reference=with_ref), out_shardings=shardings
  )()
  if init_params_fn is not None:
    params = init_params_fn(abstract.params, shardings.params)
    # The reference gets its own buffers: the train step donates the state, and one buffer cannot be donated twice.
    ref = (
      jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=shardings.params)(params)
      if with_ref
      else None
    )
    state = state.replace(
      params=params, opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params), ref_params=ref
    )
  return state, shardings, 0


@workdir_lock.holding_workdir  # one run per workdir, for the whole run
def train(
  config,
  workdir: str | Path,
  stage: StageData,
  *,
  init_params_fn: Callable | None = None,
  on_step: Callable | None = None,
  stop_at: int | None = None,
) -> dict[str, Any]:
  """Runs (or resumes) a stage to `config.train.steps`; returns the final metrics.

  `stop_at` ends this invocation early at that step with a checkpoint (a time-sliced or preemptible
  job); the schedule still follows `config.train.steps`, so the next invocation continues exactly.
  """
  workdir = paths.path(workdir)  # local or gs://
  workdir.mkdir(parents=True, exist_ok=True)
  t_cfg = config.train
  model_cfg = ModelConfig.from_dict(config.model)
  mesh = mesh_lib.make_mesh(config.mesh)
  B, accum = int(t_cfg.batch_size), int(t_cfg.accum_steps)
  if accum < 1 or B % accum:
    raise ValueError(f"train.batch_size={B} must be divisible by train.accum_steps={accum}")
  mesh_lib.check_batch_divisible(B // accum, mesh)

  ckpt = ckpt_lib.Checkpointer(
    workdir / "checkpoints", keep=int(t_cfg.keep_checkpoints), async_save=bool(t_cfg.async_checkpoint)
  )
  identity = ckpt_lib.run_identity(config)
  if ckpt.latest_step() is not None:
    ckpt_lib.check_identity(ckpt.read_meta() or {}, identity, stage.tokenizer.identity, str(workdir))
  schedule_changes = (
    ckpt_lib.check_schedule(
      ckpt.read_meta() or {},
      identity["optimizer"],
      allow=bool(t_cfg.get("allow_schedule_change", False)),
      workdir=str(workdir),
    )
    if ckpt.latest_step() is not None
    else {}
  )
  objective = make_objective(config)
  optimizer = make_optimizer(t_cfg, jax.eval_shape(lambda: init_params(model_cfg, int(config.seed))))
  schedule = learning_rate_schedule(t_cfg)
  state, shardings, start = _init_or_restore(
    config, model_cfg, optimizer, mesh, ckpt, stage, init_params_fn, with_ref=bool(objective.needs_reference)
  )
  ckpt_lib.check_free_space(ckpt.directory, state, int(t_cfg.keep_checkpoints))

  step_fn = jit_train_step(
    make_train_step(objective, optimizer, schedule, accum_steps=accum, guard_nonfinite=bool(t_cfg.skip_nonfinite)),
    shardings,
    mesh,
    accum,
  )
  eval_step = make_eval_step(objective, mesh)
  eval_batches = [to_global(process_rows(b), mesh, 1) for b in stage.eval_batches]
  meta = {
    **identity,
    "tokenizer_identity": stage.tokenizer.identity,
    "config": json.loads(config.to_json_best_effort()),
  }
  is_main = jax.process_index() == 0
  if start and is_main:
    truncate_metrics(workdir, start)  # rows of steps past the restored checkpoint are about to be run again
  writer = MetricWriter(
    workdir,
    tensorboard=bool(t_cfg.tensorboard) and is_main,
    enabled=is_main,
    trackers=t_cfg.get("trackers", "tensorboard"),
    config=meta["config"],
  )
  if schedule_changes:
    logging.warning(
      "train.allow_schedule_change=True: resuming step %d with changed settings %s", start, schedule_changes
    )
    writer.write({"step": start, "schedule_changed": json.dumps(schedule_changes)})
  guard = preemption.PreemptionGuard(
    checkpoint_minutes=float(t_cfg.get("checkpoint_minutes", 0.0) or 0.0), process_count=jax.process_count()
  )
  preempted_at = None
  fpt = functools.lru_cache(maxsize=None)(functools.partial(flops_per_token, model_cfg))  # per sequence length
  peak = device_peak_flops()
  if peak:
    peak *= mesh.devices.size  # tokens_per_s counts the global batch, so compare with all devices' peak
  profile_steps = int(t_cfg.get("profile_steps", 0))
  profile_window = (start + 3, start + 3 + profile_steps) if profile_steps > 0 else None  # after warm-up
  total_steps = int(t_cfg.steps)
  progress = ProgressLine(total_steps, start)
  prefetch = DevicePrefetcher(stage.train_iter, mesh, accum_steps=accum, size=2, with_tokens=True)
  tokens_seen = _tokens_before(config, ckpt, start, B)
  final: dict[str, Any] = {}
  last_good_ckpt = ckpt.latest_step()
  # Steps dispatched but not yet looked at: (step, device metrics, data state after that batch). The host reads
  # them in one transfer at log steps (one step late, so the newest step keeps the device busy meanwhile) and
  # before every evaluation or save; in between it never waits for the device.
  pending: list = []
  t_last = time.perf_counter()

  def process_pending():
    nonlocal t_last, pending
    if not pending:
      return
    items, pending = pending, []
    host = _host_metrics(items)  # waits for the device: the clock is read after, so the wait counts here
    now = time.perf_counter()
    seconds, t_last = max(now - t_last, 1e-9), now
    # Tokens and FLOPs of the interval from its batches (lengths may change under data.seq_len_schedule).
    interval = {
      "step_time_s": seconds / len(items),
      "tokens_per_s": sum(it[3][0] for it in items) / seconds,
      "flops_per_s": sum(fpt(it[3][1]) * it[3][0] for it in items) / seconds,
    }
    for (step, _, data_state, n_tokens), m in zip(items, host):
      process(step, m, data_state, n_tokens[0], interval)

  def process(step, m, data_state, n_tokens, interval):
    nonlocal tokens_seen
    if not m.pop("finite") and not t_cfg.skip_nonfinite:
      raise NonFiniteLossError(
        f"non-finite loss or gradient norm at step {step} (loss={m.get('objective_loss')}, grad_norm="
        f"{m.get('grad_norm')}); data position {json.dumps(data_state)[:300]}. Nothing from this step on was "
        f"saved; last good checkpoint: step {last_good_ckpt} in {ckpt.directory}. Lower train.lr, raise "
        "train.warmup_steps, or set train.skip_nonfinite=True to skip such batches."
      )
    tokens_seen += n_tokens
    m.update(
      step=step + 1,
      step_time_s=interval["step_time_s"],
      tokens_per_s=interval["tokens_per_s"],
      tokens=n_tokens,
      tokens_seen=tokens_seen,
    )
    if peak:
      m["mfu"] = interval["flops_per_s"] / peak
    if (step + 1) % int(t_cfg.log_every) == 0 or step == start:
      writer.write(m)
      progress.show(m)
    if on_step:
      on_step(m)
    final.update(m)
    return m

  mesh_ctx = kernel_mesh_context(mesh)  # TPU: splash attention is traced under the mesh (shard_map)
  mesh_ctx.__enter__()
  tracing = False
  try:
    guard.install()
    end = min(total_steps, stop_at) if stop_at else total_steps
    for step in range(start, end):
      batch, data_state, n_tokens = next(prefetch)
      if profile_window and step == profile_window[0] and is_main:
        jax.profiler.start_trace(str(workdir / "profile"))
        tracing = True
      state, dev_metrics = step_fn(state, batch)
      if tracing and step + 1 in (profile_window[1], end):
        jax.block_until_ready(dev_metrics)  # the trace must cover the device work of its last step
        jax.profiler.stop_trace()
        tracing = False
        trace_summary.summarize(workdir / "profile", top=15)
      if pending and (pending[-1][0] == start or (pending[-1][0] + 1) % int(t_cfg.log_every) == 0):
        process_pending()  # the previous step was a log step
      pending.append((step, dev_metrics, data_state, n_tokens))
      stop, save_due = guard.check(step)  # a SIGTERM/SIGINT arrived; train.checkpoint_minutes have passed
      done = step + 1 == end or stop
      evaluate_now = (step + 1) % int(t_cfg.eval_every) == 0 or (done and not stop)
      save_now = (step + 1) % int(t_cfg.checkpoint_every) == 0 or done or save_due
      if evaluate_now or save_now:
        process_pending()  # syncs on this step: never evaluate or save a non-finite state unnoticed
      if evaluate_now:
        ev = evaluate(
          eval_step, state.params, eval_batches, state.ref_params, reports_perplexity=bool(objective.reports_perplexity)
        )
        ev["step"], ev["tokens_seen"] = step + 1, tokens_seen
        writer.write(ev)
        progress.show({**final, **ev})
        final.update(ev)
      if save_now:
        ckpt.save(
          step + 1, state, data_state, {**meta, "step": step + 1, "tokens_seen": tokens_seen}, force=done or save_due
        )
        guard.saved()
        last_good_ckpt = step + 1
      if (step + 1) % int(t_cfg.log_every) == 0:
        ckpt.check_saves()  # a failed background save (disk full) stops the run now, not one interval later
      if stop:
        preempted_at = step + 1
        break
    process_pending()
  finally:
    if tracing:
      jax.profiler.stop_trace()
    mesh_ctx.__exit__(None, None, None)
    prefetch.close()
    ckpt.close()
    writer.close()
    guard.uninstall()  # only now: a second signal while the last save commits still exits at once
  if preempted_at is not None:
    raise guard.preempted(preempted_at)
  final["skipped_steps"] = int(jax.device_get(state.skipped))
  final["params"] = state.params
  return final


def _tokens_before(config, ckpt, start: int, batch_size: int) -> int:
  """Tokens trained before `start`: as saved with the checkpoint, else the scheduled batch shapes (older runs)."""
  if start == 0:
    return 0
  saved = (ckpt.read_meta(start) or {}).get("tokens_seen")
  if saved is not None:
    return int(saved)
  from modernlm_jax.data.pipeline import scheduled_tokens

  return scheduled_tokens(config.data, start, batch_size)

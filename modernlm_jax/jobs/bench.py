"""Training-step benchmark: compile, warm up, time N steady-state steps, print one JSON line.

    python -m modernlm_jax.main --config=configs/bench.py:gpt2-125m --workdir=runs/bench
    python -m modernlm_jax.main --config=configs/bench.py:modern-tiny --config.bench.steps=20

The step is the training loop's own (`make_train_step` + `jit_train_step`: same mesh, shardings,
donation, device prefetch), compiled ahead of time (`lower(...).compile()`, reported as
`compile_s`). The timed window issues `steps` steps back to back and synchronises once, at its end,
so host dispatch overlaps device work exactly as in training.

Reported: `tokens_per_s`, `step_ms`, `model_tflops` (model FLOP/s / 1e12 over all devices), `mfu`
(against the bf16 dense peak of `train/flops.py`: H100/H200 989, A100 312, TPU v4 275, v3 123 TFLOP/s
per device; null where the peak is unknown, e.g. CPU), `compile_s`, `peak_memory_bytes` (device
`memory_stats` peak on GPU/TPU; the process's peak resident set on CPU, labelled by
`peak_memory_source`) and the resolved configuration. FLOPs per token come from
`train.flops.flops_per_token`, the counter the training loop's MFU uses: 6·N (N = parameters in
matmuls, the LM head included, the input embedding lookup not) + 12·L_attn·T·d for attention scores
and values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from modernlm_jax.model import ModelConfig, init_params
from modernlm_jax.model.attention import select_attention_impl
from modernlm_jax.model.scales import count_params
from modernlm_jax.model.tpu_attention import kernel_mesh_context
from modernlm_jax.train import mesh as mesh_lib
from modernlm_jax.train import trace_summary
from modernlm_jax.train.flops import device_peak_flops, flops_per_token
from modernlm_jax.train.optim import learning_rate_schedule, make_optimizer
from modernlm_jax.train.prefetch import DevicePrefetcher
from modernlm_jax.train.registry import make_objective
from modernlm_jax.train.step import create_state, jit_train_step, make_train_step, state_shardings
from modernlm_jax.train.synthetic import SyntheticBatches

# Defaults when bench.batch_size / seq_len / steps / warmup are left "auto" (0, 0, 0, -1).
ACCELERATOR_DEFAULTS = dict(batch_size=16, seq_len=1024, steps=20, warmup=3)
CPU_DEFAULTS = dict(batch_size=4, seq_len=128, steps=5, warmup=1)
RESULT_FIELDS = (
  "preset",
  "backend",
  "device_kind",
  "num_devices",
  "tokens_per_s",
  "step_ms",
  "model_tflops",
  "mfu",
  "peak_tflops_per_device",
  "flops_per_token",
  "xla_flops_per_token",
  "compile_s",
  "peak_memory_bytes",
  "peak_memory_source",
  "loss",
  "params",
  "config",
)


def resolve(config) -> ml_collections.ConfigDict:
  """A copy of `config` with the bench knobs applied to model/train/data and every "auto" filled in."""
  backend = jax.default_backend()
  b = config.bench
  defaults = CPU_DEFAULTS if backend == "cpu" else ACCELERATOR_DEFAULTS
  c = ml_collections.ConfigDict(config.to_dict())
  max_len = int(c.model.max_len)
  seq_len = int(b.seq_len) or min(defaults["seq_len"], max_len)
  if seq_len > max_len:
    raise ValueError(f"bench.seq_len={seq_len} exceeds model.max_len={max_len}; lower bench.seq_len")
  for name in ("steps", "batch_size", "seq_len"):
    if int(b[name]) < 0:
      raise ValueError(f"bench.{name}={b[name]} must be >= 0 (0 = auto: {defaults[name]} on {backend})")
  c.bench.batch_size = int(b.batch_size) or defaults["batch_size"]
  c.bench.seq_len = seq_len
  c.bench.steps = int(b.steps) or defaults["steps"]
  # At least one: the step run on the batch the step was compiled with.
  c.bench.warmup = max(1, int(b.warmup) if int(b.warmup) >= 0 else defaults["warmup"])
  c.model.dtype, c.model.attention_impl, c.model.remat = str(b.dtype), str(b.attention_impl), str(b.remat)
  c.train.loss_chunk = int(b.loss_chunk)
  c.train.batch_size = c.bench.batch_size
  c.data.seq_len = seq_len
  if bool(b.synthetic):
    c.data.isolate_documents = False  # synthetic rows are one segment each: a plain causal mask is the same function
  ModelConfig.from_dict(c.model)  # validates dtype / attention_impl / remat with a message naming the choices
  return c


@dataclasses.dataclass
class BenchSetup:
  config: Any  # resolved
  model_cfg: ModelConfig
  mesh: Any
  compiled: Any
  state: Any
  batches: Any  # DevicePrefetcher: (device batch, data state)
  compile_s: float
  kernel: tuple[str, str]
  cost_flops_per_step: float | None
  first_metrics: Any = None  # of warm-up step 0, the batch the step was compiled on

  def run_steps(self, n: int):
    """`n` steps dispatched back to back; one sync at the end. Returns (seconds, last metrics)."""
    state, metrics = self.state, None
    t0 = time.perf_counter()
    for _ in range(n):
      batch, _ = next(self.batches)
      state, metrics = self.compiled(state, batch)
    jax.block_until_ready((state, metrics))
    self.state = state
    return time.perf_counter() - t0, metrics

  def warm_up(self):
    """The remaining warm-up steps (step 0 ran in `build`), synchronised."""
    self.run_steps(max(int(self.config.bench.warmup) - 1, 0))
    return self.state

  def close(self):
    self.batches.close()


def mesh_context(mesh):
  return kernel_mesh_context(mesh)


def _train_iterator(c, workdir):
  if bool(c.bench.synthetic):
    return SyntheticBatches(
      batch_size=int(c.train.batch_size),
      seq_len=int(c.data.seq_len),
      vocab_size=int(c.model.vocab_size),
      seed=int(c.seed),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  from modernlm_jax.data.pipeline import make_train_iterator
  from modernlm_jax.jobs.common import run_tokenizer

  tok = run_tokenizer(c, workdir)
  return make_train_iterator(
    c.data,
    tok,
    seed=int(c.seed),
    global_batch_size=int(c.train.batch_size),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    return flops if flops > 0 else None
  except Exception:  # noqa: BLE001 - cost analysis is optional diagnostics, absent on some backends
    return None


def build(config, workdir: str | Path) -> BenchSetup:
  """The training loop's step for the resolved config, compiled ahead of time on the first batch."""
  c = resolve(config)
  model_cfg = ModelConfig.from_dict(c.model)
  mesh = mesh_lib.make_mesh(c.mesh)
  accum = int(c.train.accum_steps)
  if accum < 1 or c.train.batch_size % accum:
    raise ValueError(f"bench.batch_size={c.train.batch_size} must be divisible by train.accum_steps={accum}")
  mesh_lib.check_batch_divisible(c.train.batch_size // accum, mesh)
  objective = make_objective(c)
  optimizer = make_optimizer(c.train, jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(int(c.seed)))))
  schedule = learning_rate_schedule(c.train)
  make_state = lambda: create_state(model_cfg, optimizer, int(c.seed))
  shardings = state_shardings(jax.eval_shape(make_state), model_cfg, mesh)
  state = jax.jit(make_state, out_shardings=shardings)()
  step = jit_train_step(
    make_train_step(objective, optimizer, schedule, accum_steps=accum, guard_nonfinite=bool(c.train.skip_nonfinite)),
    shardings,
    mesh,
    accum,
  )
  batches = DevicePrefetcher(_train_iterator(c, workdir), mesh, accum_steps=accum, size=2)
  try:
    first, _ = next(batches)
    with kernel_mesh_context(mesh):
      t0 = time.perf_counter()
      compiled = step.lower(state, first).compile()
      compile_s = time.perf_counter() - t0
  except BaseException:
    batches.close()
    raise
  state, first_metrics = compiled(state, first)  # the first batch is not wasted: it is warm-up step 0
  has_segments = objective.use_segment_ids if hasattr(objective, "use_segment_ids") else True
  kernel = select_attention_impl(
    model_cfg, backend=jax.default_backend(), has_segments=has_segments, decoding=False, seq_len=int(c.data.seq_len)
  )
  logging.info("bench: compiled in %.1fs; attention kernel %s (%s)", compile_s, *kernel)
  return BenchSetup(
    config=c,
    model_cfg=model_cfg,
    mesh=mesh,
    compiled=compiled,
    state=state,
    batches=batches,
    compile_s=compile_s,
    kernel=kernel,
    cost_flops_per_step=_xla_flops(compiled),
    first_metrics=first_metrics,
  )


def peak_memory() -> tuple[int | None, str]:
  """(bytes, source): the largest device peak on GPU/TPU, else this process's peak resident set."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU devices may not implement memory_stats
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  if peaks:
    return max(peaks), "device_memory_stats_peak"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss if sys.platform == "darwin" else rss * 1024), "host_peak_rss"


def measure(setup: BenchSetup) -> dict[str, Any]:
  c = setup.config
  steps = int(c.bench.steps)
  setup.warm_up()
  seconds, metrics = setup.run_steps(steps)
  B, T = int(c.train.batch_size), int(c.data.seq_len)
  tokens_per_s = B * T * steps / seconds
  fpt = flops_per_token(setup.model_cfg, T)
  peak = device_peak_flops()
  n_dev = setup.mesh.devices.size
  mem, mem_source = peak_memory()
  device = jax.devices()[0]
  return {
    "preset": str(c.get("preset", "")),
    "backend": jax.default_backend(),
    "device_kind": getattr(device, "device_kind", str(device)),
    "num_devices": int(n_dev),
    "tokens_per_s": tokens_per_s,
    "step_ms": 1e3 * seconds / steps,
    "model_tflops": fpt * tokens_per_s / 1e12,
    "mfu": fpt * tokens_per_s / (peak * n_dev) if peak else None,
    "peak_tflops_per_device": peak / 1e12 if peak else None,
    "flops_per_token": fpt,
    "xla_flops_per_token": setup.cost_flops_per_step / (B * T) if setup.cost_flops_per_step else None,
    "compile_s": setup.compile_s,
    "peak_memory_bytes": mem,
    "peak_memory_source": mem_source,
    "loss": float(metrics["loss"]),
    "params": count_params(setup.model_cfg)["total"],
    "config": {
      "steps": steps,
      "warmup": int(c.bench.warmup),
      "synthetic": bool(c.bench.synthetic),
      "data_source": "synthetic" if c.bench.synthetic else str(c.data.get("source", "")),
      "batch_size": B,
      "seq_len": T,
      "accum_steps": int(c.train.accum_steps),
      "dtype": setup.model_cfg.dtype,
      "attention_impl": setup.model_cfg.attention_impl,
      "attention_kernel": setup.kernel[0],
      "attention_kernel_reason": setup.kernel[1],
      "loss_chunk": int(c.train.loss_chunk),
      "remat": setup.model_cfg.remat,
      "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
    },
  }


def run(config, workdir: str | Path) -> dict[str, Any]:
  """Benchmarks the train step; prints the result as one JSON line and writes `<workdir>/bench.json`.

  With `bench.profile_steps > 0`, then traces that many more steps to `<workdir>/profile` and prints
  the top operations by time.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  setup = build(config, workdir)
  try:
    with mesh_context(setup.mesh):
      result = measure(setup)
      if jax.process_index() == 0:
        print(json.dumps(result), flush=True)
        (workdir / "bench.json").write_text(json.dumps(result, indent=2))
      if int(setup.config.bench.profile_steps) > 0:
        setup.state = trace_summary.trace_steps(
          setup.compiled, setup.state, setup.batches, int(setup.config.bench.profile_steps), workdir / "profile"
        )
        if jax.process_index() == 0:
          result["top_ops"] = [
            dataclasses.asdict(r) for r in trace_summary.summarize(workdir / "profile", int(setup.config.bench.top_ops))
          ]
  finally:
    setup.close()
  return result

"""The inference protocol for one comparison member: prefill, decode, peak memory, context scaling.

Prefill = one jitted forward pass over `[1, L]` tokens; decode = a jitted single-token step that
carries the model's cache (KV cache or recurrent state), batch 1, greedy. Lengths are capped at a
model's `max_len` when it has attention or a learned position table (what is skipped is recorded
with the reason); attention-free families also run the longer lengths. Prefill and decode lengths
are common to all families at a scale, so their times compare.

Peak memory is a process-lifetime high-water mark (device allocator on GPU/TPU, RSS on CPU) that
cannot be reset, so with `subprocess=True` each member is measured in a fresh Python process
(`python -m modernlm_jax.compare.inference DIR`); in-process measurement leaves memory out.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from modernlm_jax.eval import inference_protocol as ip
from modernlm_jax.model import LanguageModel, ModelConfig, init_cache


def length_cap(cfg: ModelConfig) -> int | None:
  """Longest context the model supports; None when nothing bounds it (no attention, no position table)."""
  return cfg.max_len if cfg.has_attention or cfg.positions == "learned" else None


def _cap_reason(cfg: ModelConfig) -> str:
  why = "learned position table" if cfg.positions == "learned" else f"{cfg.positions} attention"
  return f"longer than max_len {cfg.max_len} ({why})"


def scale_plan(cfgs: dict[str, ModelConfig], settings) -> dict[str, dict]:
  """arm -> measurement plan for one scale (common prefill / decode lengths, per-arm context lengths)."""
  from modernlm_jax.compare.plan import parse_ints

  caps = [c for c in (length_cap(cfg) for cfg in cfgs.values()) if c is not None]
  common_cap = min(caps) if caps else None
  prefill = int(settings.prefill_tokens) if common_cap is None else min(int(settings.prefill_tokens), common_cap)
  decode = int(settings.decode_tokens) if common_cap is None else min(int(settings.decode_tokens), common_cap)
  lengths = parse_ints(settings.context_lengths, "inference.context_lengths")
  longer = (
    parse_ints(settings.long_context_lengths, "inference.long_context_lengths")
    if str(settings.long_context_lengths).strip()
    else []
  )
  plans = {}
  for arm, cfg in cfgs.items():
    cap = length_cap(cfg)
    wanted = sorted(set(lengths) | set(longer))  # the longer ones only ever fit an unbounded family
    keep = [n for n in wanted if cap is None or n <= cap]
    plans[arm] = {
      "prefill_tokens": prefill,
      "prefill_repeats": int(settings.prefill_repeats),
      "decode_tokens": decode,
      "decode_repeats": int(settings.decode_repeats),
      "context_lengths": keep,
      "context_repeats": int(settings.context_repeats),
      "context_skipped": {str(n): _cap_reason(cfg) for n in wanted if n not in keep},
      "memory": bool(settings.subprocess),
    }
  return plans


class _Prefill:
  """`fn(tokens)` with params bound as an argument, and `.lower(tokens)` for XLA's memory analysis.

  One ahead-of-time compilation per shape serves both the timed calls and the memory analysis
  (`compiled_footprint_bytes` lowers and compiles; without the cache every length compiled twice).
  """

  def __init__(self, jitted, params):
    self._jitted, self._params = jitted, params
    self._compiled: dict[tuple, Any] = {}

  def _executable(self, tokens):
    key = (tuple(tokens.shape), str(tokens.dtype))
    if key not in self._compiled:
      self._compiled[key] = self._jitted.lower(self._params, tokens).compile()
    return self._compiled[key]

  def __call__(self, tokens):
    return self._executable(tokens)(self._params, tokens)

  def lower(self, tokens):
    return _Lowered(self._executable(tokens))


class _Lowered:
  def __init__(self, compiled):
    self._compiled = compiled

  def compile(self):
    return self._compiled


def measure(params, cfg: ModelConfig, plan: dict) -> dict:
  """Runs the protocol in this process. Prefill and decode run first, so the memory peak read right
  after them is the protocol's length, not the longest context-scaling length."""
  model = LanguageModel(cfg)
  # Batch-1 inference runs on one device. Params still laid out on the training mesh would give the
  # decode step's outputs another sharding than its first inputs: a recompile inside the timed loop.
  device = jax.devices()[0]
  params = jax.device_put(params, device)
  rng = np.random.default_rng(0)

  def tokens(length: int):
    return jnp.asarray(rng.integers(0, cfg.vocab_size, size=(1, length)), jnp.int32)

  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  prefill_fn = _Prefill(forward, params)
  out: dict[str, Any] = {
    "prefill": ip.measure_prefill(prefill_fn, tokens(plan["prefill_tokens"]), repeats=plan["prefill_repeats"])
  }

  @jax.jit
  def step(p, state):
    cache, tok_B, pos_B = state
    logits, cache = model.apply({"params": p}, tok_B[:, None], positions=pos_B[:, None], cache=cache)
    return cache, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), pos_B + 1

  n = plan["decode_tokens"]
  # Committed like the step's outputs: an uncommitted start state compiles a second variant of the
  # step at its second call, which would land inside the timed loop. Two warm-up steps make sure.
  state0 = jax.device_put((init_cache(cfg, 1, n), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)), device)
  jax.block_until_ready(step(params, step(params, state0)))
  out["decode"] = ip.measure_decode(functools.partial(step, params), state0, n_tokens=n, repeats=plan["decode_repeats"])
  out["memory"] = ip.peak_memory_bytes() if plan["memory"] else None
  if len(plan["context_lengths"]) >= 2:
    out["context_scaling"] = ip.context_scaling(
      lambda length: (prefill_fn, tokens(length)), plan["context_lengths"], repeats=plan["context_repeats"]
    )
  return out


def entry(measured: dict, plan: dict) -> dict:
  """The results.json `inference` entry from `measure`'s output."""
  e: dict[str, Any] = {
    "prefill_s": float(measured["prefill"]["median_s"]),
    "prefill_tokens": plan["prefill_tokens"],
    "prefill_repeats": plan["prefill_repeats"],
    "decode_tok_s": float(measured["decode"]["tokens_per_s"]),
    "decode_tokens": plan["decode_tokens"],
    "decode_repeats": plan["decode_repeats"],
  }
  mem = measured.get("memory")
  if mem:
    e["peak_mem_bytes"], e["mem_kind"] = int(mem["peak_mem_bytes"]), mem["mem_kind"]
  else:
    e["memory_note"] = "not measured: the member was timed in the comparison's own process (inference.subprocess=False)"
  cs = measured.get("context_scaling")
  if cs:
    e["context_scaling"] = {
      k: cs[k] for k in ("lengths", "times", "exponent", "r2", "label", "mem_bytes", "mem_kind", "mem_exponent")
    }
  else:
    e["context_scaling_note"] = f"not measured: fewer than 2 context lengths fit ({plan['context_lengths']})"
  if plan["context_skipped"]:
    e["context_skipped"] = plan["context_skipped"]
  return e


# --------------------------------------------------------------------------- isolated process


def _save_params(params, path: Path) -> None:
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in kp): np.asarray(v)
    for kp, v in jax.tree_util.tree_leaves_with_path(params)
  }
  np.savez(path, **flat)


def _load_params(path: Path) -> dict:
  tree: dict = {}
  with np.load(path) as data:
    for name in data.files:
      node = tree
      *parents, leaf = name.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = jnp.asarray(data[name])
  return tree


def measure_in_subprocess(params, cfg: ModelConfig, plan: dict, timeout_s: float | None = None) -> dict:
  """`measure` in a fresh Python process, so its memory peak belongs to this member alone."""
  with tempfile.TemporaryDirectory(prefix="compare-inference-") as tmp:
    tmp = Path(tmp)
    _save_params(jax.device_get(params), tmp / "params.npz")
    (tmp / "job.json").write_text(json.dumps({"model": cfg.to_dict(), "plan": plan}))
    # The parent may hold a preallocated GPU pool; the child allocates on demand from what is left.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    proc = subprocess.run(
      [sys.executable, "-m", "modernlm_jax.compare.inference", str(tmp)],
      capture_output=True,
      text=True,
      timeout=timeout_s,
      env=env,
    )
    if proc.returncode != 0 or not (tmp / "result.json").is_file():
      raise RuntimeError(
        f"inference measurement process failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}"
      )
    return json.loads((tmp / "result.json").read_text())


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise SystemExit("usage: python -m modernlm_jax.compare.inference JOB_DIR (written by measure_in_subprocess)")
  job_dir = Path(argv[1])
  job = json.loads((job_dir / "job.json").read_text())
  cfg = ModelConfig.from_dict(job["model"])
  result = measure(_load_params(job_dir / "params.npz"), cfg, job["plan"])
  (job_dir / "result.json").write_text(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
  main(sys.argv)

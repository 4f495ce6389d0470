"""Model-agnostic inference timing: prefill, decode, peak memory, context scaling, CER.

The harness only sees callables, so every family (attention with a KV cache, recurrent state) is
measured the same way. Protocol defaults: prefill of 1024 tokens repeated 100×, 256-token decode
repeated 10×, batch 1, context lengths [256, 512, 1024, 2048]. JAX dispatch is asynchronous, so
every timed call ends with `block_until_ready` on its outputs, and the first call of each callable
is timed separately (`first_call_s`) and excluded, because it includes tracing and compilation.

Memory. On GPU/TPU `peak_memory_bytes` reads the device allocator's ``peak_bytes_in_use``; on CPU
the allocator reports nothing, so it falls back to the process's peak resident set size and says so
in ``mem_kind`` ("process_peak_rss"). Both are process-lifetime high-water marks that cannot be
reset: measure each family in its own process, or the second family inherits the first's peak.
`context_scaling` additionally records the compiled footprint of a jitted prefill per length
(argument + output + temporary buffers from XLA's memory analysis), which is per-function and
works on every backend.

Compute-efficiency ratio. The protocol defines CER = performance / inference time and illustrates
it with perplexity, which is lower-is-better and so would reward a worse model. CER here divides a
*higher-is-better* quality by the time: by default quality = 1/perplexity = exp(−mean loss), the
geometric-mean probability the model gives the correct next token; accuracy works too. The time is
the median prefill time of the protocol's prefill pass, in seconds, so CER has units of 1/s.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from modernlm_jax.eval.growth import growth_exponent

PREFILL_REPEATS = 100
DECODE_TOKENS = 256
DECODE_REPEATS = 10
CONTEXT_LENGTHS = (256, 512, 1024, 2048)


def _block(tree: Any) -> Any:
  """Waits for every device array in a pytree; non-array leaves pass through untouched."""
  for leaf in jax.tree_util.tree_leaves(tree):
    if hasattr(leaf, "block_until_ready"):
      leaf.block_until_ready()
  return tree


def _copy_tree(tree: Any) -> Any:
  # A step function may donate its state buffers; every repeat needs a live copy of the start state.
  return jax.tree_util.tree_map(lambda x: x.copy() if hasattr(x, "copy") else x, tree)


def _percentiles(samples: Sequence[float]) -> dict:
  arr = np.asarray(samples, dtype=np.float64)
  return {
    "median": float(np.median(arr)),
    "mean": float(np.mean(arr)),
    "p10": float(np.percentile(arr, 10)),
    "p90": float(np.percentile(arr, 90)),
    "min": float(np.min(arr)),
  }


def _check_repeats(repeats: int) -> None:
  if not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive integer, got {repeats!r}")


def measure_prefill(prefill_fn: Callable[[Any], Any], tokens: Any, repeats: int = PREFILL_REPEATS) -> dict:
  """Times `prefill_fn(tokens)` over `repeats` calls after one excluded compile call.

  Returns median_s, mean_s, p10_s, p90_s, min_s, first_call_s, repeats, n_tokens and
  tokens_per_s (n_tokens / median_s), where n_tokens is tokens.size.
  """
  _check_repeats(repeats)
  t0 = time.perf_counter()
  _block(prefill_fn(tokens))
  first = time.perf_counter() - t0
  samples = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    _block(prefill_fn(tokens))
    samples.append(time.perf_counter() - t0)
  p = _percentiles(samples)
  n_tokens = int(np.size(tokens))
  return {
    "median_s": p["median"],
    "mean_s": p["mean"],
    "p10_s": p["p10"],
    "p90_s": p["p90"],
    "min_s": p["min"],
    "first_call_s": first,
    "repeats": repeats,
    "n_tokens": n_tokens,
    "tokens_per_s": n_tokens / p["median"] if p["median"] > 0 else float("inf"),
  }


def measure_decode(
  step_fn: Callable[[Any], Any], state: Any, n_tokens: int = DECODE_TOKENS, repeats: int = DECODE_REPEATS
) -> dict:
  """Decode throughput of `state = step_fn(state)` run `n_tokens` times per repeat.

  `step_fn` produces one token per call (batch 1 per the protocol) and returns the next state
  (cache, last token, rng ... whatever it needs). Each repeat starts from a copy of `state`.
  One warm-up step (compile) is excluded. Returns tokens_per_s (median over repeats),
  s_per_token, tokens_per_s_p10/p90, first_call_s, n_tokens, repeats.
  """
  _check_repeats(repeats)
  if not isinstance(n_tokens, int) or n_tokens < 1:
    raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
  t0 = time.perf_counter()
  _block(step_fn(_copy_tree(state)))
  first = time.perf_counter() - t0
  rates = []
  for _ in range(repeats):
    s = _block(_copy_tree(state))
    t0 = time.perf_counter()
    for _ in range(n_tokens):
      s = step_fn(s)
    _block(s)
    elapsed = time.perf_counter() - t0
    rates.append(n_tokens / elapsed if elapsed > 0 else float("inf"))
  med = statistics.median(rates)
  return {
    "tokens_per_s": float(med),
    "s_per_token": 1.0 / med if med > 0 else float("inf"),
    "tokens_per_s_p10": float(np.percentile(rates, 10)),
    "tokens_per_s_p90": float(np.percentile(rates, 90)),
    "first_call_s": first,
    "n_tokens": n_tokens,
    "repeats": repeats,
  }


def _process_peak_rss_bytes() -> int:
  """This process's own resident-set high-water mark.

  Linux keeps `ru_maxrss` across fork and exec, so a measurement child started by a 3 GB parent reported the
  parent's 3 GB as its own peak. /proc/self/status `VmHWM` belongs to the current address space (it starts again
  at exec), so it is read first; `ru_maxrss` is the fallback where /proc does not exist (macOS).
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024  # kB
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports kibibytes, macOS bytes.
  return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def peak_memory_bytes(device: Any | None = None) -> dict:
  """Peak memory so far: {"peak_mem_bytes", "mem_kind", "device"} (keys match results.json).

  Device allocator peak on GPU/TPU; process peak RSS on CPU (labelled "process_peak_rss").
  """
  device = device or jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # some backends raise instead of returning None
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return {
      "peak_mem_bytes": int(stats["peak_bytes_in_use"]),
      "mem_kind": "device_peak_bytes_in_use",
      "device": f"{device.platform}:{device.id}",
    }
  return {"peak_mem_bytes": _process_peak_rss_bytes(), "mem_kind": "process_peak_rss", "device": "process"}


def compiled_footprint_bytes(fn: Callable, *args: Any) -> int | None:
  """Argument + output + temporary bytes XLA plans for a jitted `fn(*args)`; None if unavailable."""
  lower = getattr(fn, "lower", None)
  if lower is None:
    return None
  try:
    m = lower(*args).compile().memory_analysis()
  except Exception:  # backends without memory analysis
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def context_scaling(
  prefill_fn_factory: Callable[[int], tuple[Callable[[Any], Any], Any]],
  lengths: Sequence[int] = CONTEXT_LENGTHS,
  repeats: int = 10,
) -> dict:
  """Prefill time (and compiled memory) against context length, with the fitted growth exponent.

  `prefill_fn_factory(length)` returns `(prefill_fn, tokens)` for that length. Returns lengths,
  times (median seconds), exponent, r2, label ("linear", "quadratic", ...), mem_bytes (compiled
  footprint per length, None where the callable is not jitted), mem_kind, mem_exponent.
  """
  lengths = [int(t) for t in lengths]
  if len(set(lengths)) < 2:
    raise ValueError(f"context_scaling needs at least 2 distinct lengths, got {lengths}")
  times, mems = [], []
  for length in lengths:
    fn, tokens = prefill_fn_factory(length)
    times.append(measure_prefill(fn, tokens, repeats=repeats)["median_s"])
    mems.append(compiled_footprint_bytes(fn, tokens))
  fit = growth_exponent(lengths, times)
  out = {
    "lengths": lengths,
    "times": times,
    "exponent": fit["exponent"],
    "r2": fit["r2"],
    "label": fit["label"],
    "mem_bytes": mems,
    "mem_kind": "compiled_footprint" if any(m is not None for m in mems) else None,
    "mem_exponent": None,
  }
  known = [(t, m) for t, m in zip(lengths, mems) if m]
  if len({t for t, _ in known}) >= 2:
    out["mem_exponent"] = growth_exponent([t for t, _ in known], [m for _, m in known])["exponent"]
  return out


def quality_from_ppl(ppl: float) -> float:
  """1/perplexity = exp(−mean loss): higher is better, in (0, 1]."""
  if ppl <= 0:
    raise ValueError(f"perplexity must be positive, got {ppl}")
  return 1.0 / ppl


def compute_efficiency_ratio(quality: float, inference_time_s: float) -> float:
  """CER = quality / inference time. `quality` must be higher-is-better (1/ppl or accuracy)."""
  if inference_time_s <= 0:
    raise ValueError(f"inference time must be positive, got {inference_time_s}")
  return quality / inference_time_s

"""Long-context curve: loss (bits/byte) by position on long held-out documents, 2K -> 32K tokens.

Each document is fed once, in chunks, through the model's decode cache, so memory is bounded by the
cache and one chunk's activations, never by a [T, T] score matrix or a [T, V] logits array. The loss
"at context C" is the loss of the tokens at positions [C/2, C): tokens that see about C tokens of
history (a causal model's token at position p depends only on the p tokens before it, so one pass
of the longest context gives every shorter one too).

How a member is run depends on what it can do; every point is labelled with its mode:

- ``native``: attention-free (recurrent) members carry the whole document in a fixed-size state.
- ``extrapolate``: RoPE / ALiBi (position-free) attention sees the whole document in a linear KV
  cache, at distances it never saw in training. Quadratic in time, so capped at ``extrapolate_max``.
- ``window``: a rolling KV cache of ``window`` tokens (positions re-assigned inside the window), the
  only way a learned-position GPT-2 can read past its table; also run for RoPE / ALiBi.
- ``sinks``: the same rolling window of the same size, but its first ``sinks`` slots keep the first
  tokens (StreamingLLM attention sinks), so the sink effect is measured against ``window``.

Public API
----------
``modes_for(cfg) -> list[str]``; ``skipped_modes(cfg) -> {mode: reason}``.
``token_nll(params, cfg, tokens, *, mode, window, sinks=4, chunk=512) -> np.ndarray`` (nats, per target).
``bucket_edges(contexts) -> list[int]``.
``curve(params, cfg, docs, *, contexts, window, sinks, chunk, extrapolate_max, bytes_of) -> dict``
    ``{"contexts", "modes": {mode: {"label", "bpb": [..|None], "loss": [..], "buckets": [...]}}, "skipped"}``.
``python -m modernlm_jax.eval.long_context --preset hybrid-3.5m --context 32768 --mode native``
    measures one pass on random tokens in this process and prints its peak memory (JSON).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from modernlm_jax.model import LanguageModel, ModelConfig, init_cache

DEFAULT_CONTEXTS = (2048, 4096, 8192, 16384, 32768)
MODES = ("native", "extrapolate", "window", "sinks")


def modes_for(cfg: ModelConfig) -> list[str]:
  """The ways this member can read a long document."""
  if not cfg.has_attention:
    return ["native"]
  modes = [] if cfg.positions == "learned" else ["extrapolate"]
  return modes + ["window", "sinks"]


def skipped_modes(cfg: ModelConfig) -> dict[str, str]:
  if not cfg.has_attention:
    return {}
  if cfg.positions == "learned":
    return {"extrapolate": f"learned positions: the table ends at {cfg.max_len}, so it cannot extrapolate"}
  return {}


def mode_label(mode: str, window: int, sinks: int) -> str:
  return {
    "native": "recurrent state (native)",
    "extrapolate": "full attention past the trained length (extrapolation)",
    "window": f"rolling window of {window} tokens",
    "sinks": f"rolling window of {window} tokens incl. {sinks} attention sinks",
  }[mode]


@functools.partial(jax.jit, static_argnames=("cfg", "stream_sinks"), donate_argnums=(1,))
def _chunk_nll(params, cache, tokens_1T, positions_1T, targets_1T, *, cfg: ModelConfig, stream_sinks):
  logits_1TV, cache = LanguageModel(cfg).apply(
    {"params": params}, tokens_1T, positions=positions_1T, cache=cache, stream_sinks=stream_sinks
  )
  logz_1T = jax.nn.logsumexp(logits_1TV, axis=-1)
  target_1T = jnp.take_along_axis(logits_1TV, targets_1T[..., None], axis=-1)[..., 0]
  return logz_1T - target_1T, cache


def _plan(cfg: ModelConfig, mode: str, n: int, window: int, sinks: int, chunk: int) -> tuple[int, int | None, int]:
  """(cache length, stream_sinks, chunk) for a pass of n tokens."""
  if mode == "native":
    if cfg.has_attention:
      raise ValueError("mode 'native' is for attention-free members; use extrapolate, window or sinks")
    return 1, None, chunk
  if not cfg.has_attention:
    raise ValueError(f"mode {mode!r} needs attention layers; a recurrent member runs 'native'")
  if mode == "extrapolate":
    if cfg.positions == "learned":
      raise ValueError(skipped_modes(cfg)["extrapolate"])
    return n, None, chunk
  if mode not in ("window", "sinks"):
    raise ValueError(f"unknown long-context mode {mode!r}; valid modes: {list(MODES)}")
  k = sinks if mode == "sinks" else 0
  if window <= k + 1:
    raise ValueError(f"window={window} must exceed the {k} sink tokens by at least 2")
  # A chunk overwrites its oldest slots before attending, so a token sees between window-chunk and window
  # earlier tokens; a quarter of the window keeps that close to the nominal size.
  return window, k, max(1, min(chunk, (window - k) // 4))


def token_nll(
  params, cfg: ModelConfig, tokens: Sequence[int], *, mode: str, window: int = 0, sinks: int = 4, chunk: int = 512
) -> np.ndarray:
  """Negative log-likelihood (nats) of tokens[1:], each given all earlier tokens the mode lets it see."""
  toks = np.asarray(tokens, np.int32)
  if toks.size < 2:
    raise ValueError("need at least 2 tokens to score")
  n = toks.size - 1
  cache_len, stream_sinks, chunk = _plan(cfg, mode, n, window or cfg.max_len, sinks, chunk)
  cache = init_cache(cfg, 1, cache_len)
  out = np.zeros(n, np.float64)
  for s in range(0, n, chunk):
    m = min(chunk, n - s)
    t = np.zeros((1, chunk), np.int32)
    p = np.full((1, chunk), -1, np.int32)  # padding is never written to the cache
    y = np.zeros((1, chunk), np.int32)
    t[0, :m], p[0, :m], y[0, :m] = toks[s : s + m], np.arange(s, s + m), toks[s + 1 : s + m + 1]
    nll, cache = _chunk_nll(
      params, cache, jnp.asarray(t), jnp.asarray(p), jnp.asarray(y), cfg=cfg, stream_sinks=stream_sinks
    )
    out[s : s + m] = np.asarray(nll, np.float64)[0, :m]
  return out


def bucket_edges(contexts: Sequence[int]) -> list[int]:
  """[0, C0/2, C0, C1, ...]: the point of context C is the bucket [previous edge, C)."""
  cs = sorted({int(c) for c in contexts})
  if not cs or cs[0] < 2:
    raise ValueError(f"contexts must be integers >= 2, got {list(contexts)}")
  return sorted({0, cs[0] // 2, *cs})


def curve(
  params,
  cfg: ModelConfig,
  docs: Sequence[Sequence[int]],
  *,
  contexts: Sequence[int] = DEFAULT_CONTEXTS,
  window: int = 0,
  sinks: int = 4,
  chunk: int = 512,
  extrapolate_max: int = 32768,
  bytes_of: Callable[[Sequence[int]], int] | None = None,
  modes: Sequence[str] | None = None,
) -> dict[str, Any]:
  """Loss by position bucket for every mode of this member; see the module docstring.

  ``docs`` are token lists of at least max(contexts) + 1 tokens. ``bytes_of(ids)`` is the UTF-8
  byte count of those target tokens (bits per byte); without it only nats per token are given.
  """
  contexts = sorted({int(c) for c in contexts})
  edges = bucket_edges(contexts)
  need = contexts[-1] + 1
  docs = [list(d[:need]) for d in docs]
  short = [len(d) for d in docs if len(d) < need]
  if not docs or short:
    raise ValueError(
      f"every long-context document needs >= {need} tokens (max context + 1); got lengths "
      f"{short or []}{' (no documents)' if not docs else ''}: use longer documents or lower the "
      "contexts"
    )
  window = int(window) or cfg.max_len
  out: dict[str, Any] = {
    "contexts": contexts,
    "bucket_edges": edges,
    "window": window,
    "sinks": int(sinks),
    "documents": len(docs),
    "modes": {},
    "skipped": dict(skipped_modes(cfg)),
  }
  for mode in modes or modes_for(cfg):
    limit = contexts[-1]
    if mode == "extrapolate" and extrapolate_max < contexts[-1]:
      limit = max([c for c in contexts if c <= extrapolate_max], default=0)
      out["skipped"][f"extrapolate above {limit or extrapolate_max}"] = (
        f"full attention is quadratic; contexts above long_context.extrapolate_max={extrapolate_max} were not run"
      )
      if not limit:
        continue
    nll_sum = np.zeros(len(edges) - 1)
    n_tok = np.zeros(len(edges) - 1, np.int64)
    n_bytes = np.zeros(len(edges) - 1, np.int64)
    for d in docs:
      nll = token_nll(params, cfg, d[: limit + 1], mode=mode, window=window, sinks=sinks, chunk=chunk)
      for b in range(len(edges) - 1):
        lo, hi = edges[b], min(edges[b + 1], limit)
        if hi <= lo:
          continue
        nll_sum[b] += nll[lo:hi].sum()
        n_tok[b] += hi - lo
        if bytes_of is not None:
          n_bytes[b] += int(bytes_of(d[lo + 1 : hi + 1]))
    per_bucket = []
    for b in range(len(edges) - 1):
      full = edges[b + 1] <= limit
      per_bucket.append(
        {
          "start": edges[b],
          "end": edges[b + 1],
          "tokens": int(n_tok[b]) if full else 0,
          "loss": float(nll_sum[b] / n_tok[b]) if full and n_tok[b] else None,
          "bpb": (float(nll_sum[b] / math.log(2) / n_bytes[b]) if full and n_bytes[b] else None),
        }
      )
    by_end = {bk["end"]: bk for bk in per_bucket}
    out["modes"][mode] = {
      "label": mode_label(mode, window, int(sinks)),
      "loss": [by_end[c]["loss"] for c in contexts],
      "bpb": [by_end[c]["bpb"] for c in contexts],
      "buckets": per_bucket,
    }
  return out


def peak_memory_bytes() -> int:
  """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
  import resource
  import sys

  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak) * (1 if sys.platform == "darwin" else 1024)


def main(argv: Sequence[str] | None = None) -> None:
  import argparse
  import json
  import time

  from modernlm_jax.model import init_params, scales

  ap = argparse.ArgumentParser(description="One long-context pass on random tokens: time and peak memory.")
  ap.add_argument("--preset", default="hybrid-3.5m", help="model preset, e.g. hybrid-3.5m, modern-3.5m")
  ap.add_argument("--context", type=int, default=32768)
  ap.add_argument("--mode", default="", help=f"one of {list(MODES)}; default: the member's first mode")
  ap.add_argument("--chunk", type=int, default=512)
  ap.add_argument("--window", type=int, default=0)
  args = ap.parse_args(argv)
  cfg = scales.preset(args.preset)
  mode = args.mode or modes_for(cfg)[0]
  before = peak_memory_bytes()
  params = init_params(cfg, 0)
  toks = np.random.default_rng(0).integers(0, cfg.vocab_size, args.context + 1)
  t0 = time.perf_counter()
  nll = token_nll(params, cfg, toks, mode=mode, window=args.window, chunk=args.chunk)
  seconds = time.perf_counter() - t0
  print(
    json.dumps(
      {
        "preset": args.preset,
        "params": scales.count_params(cfg)["total"],
        "mode": mode,
        "context": args.context,
        "chunk": args.chunk,
        "seconds": round(seconds, 2),
        "mean_nll": float(nll.mean()),
        "peak_rss_bytes": peak_memory_bytes(),
        "peak_rss_before_model_bytes": before,
        "backend": jax.default_backend(),
      }
    )
  )


if __name__ == "__main__":
  main()

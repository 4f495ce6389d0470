"""Jitted sampling with a KV cache (and recurrent state), including StreamingLLM-style attention sinks.

Prompts are left-padded into one batch; padding carries position -1 so it is never written to the
cache. `generate` runs the whole thing on the device in one jitted call: the prompt goes through the
cache in one chunk when it fits (a linear cache; a streaming cache takes fixed-size chunks under
`lax.scan`), then tokens are sampled one at a time inside a `lax.while_loop` that stops when every row
has emitted a stop token. No per-token host round trip; only the last position is projected to the
vocabulary; greedy decoding is an argmax (no sort, softmax or cumsum); the cache is in the compute dtype.

With `stream_sinks=k`, the cache keeps the first k tokens plus a rolling window of the most recent
ones, and positions are re-assigned inside the cache, so generation (and scoring) can run far past
the training length without the attention ever seeing an unseen distance.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modernlm_jax.model import LanguageModel, ModelConfig, init_cache


def sample_logits(logits_BV, rng, temperature, top_k, top_p):
  """Greedy when temperature <= 0; otherwise temperature, then top-k (0 = off), then nucleus (top-p) filtering.

  All three knobs may be traced values, so one compiled decode loop serves every sampling setting.
  """
  V = logits_BV.shape[-1]
  temperature = jnp.asarray(temperature, jnp.float32)
  top_k = jnp.asarray(top_k, jnp.int32)
  top_p = jnp.asarray(top_p, jnp.float32)
  greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits = logits_BV / jnp.maximum(temperature, 1e-6)
  sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
  kth_B1 = jax.lax.dynamic_index_in_dim(sorted_desc, k - 1, axis=1, keepdims=True)
  logits = jnp.where(logits < kth_B1, -jnp.inf, logits)
  sorted_desc = jnp.where(jnp.arange(V)[None, :] < k, sorted_desc, -jnp.inf)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # always keeps the most likely token
  cutoff_B1 = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
  cutoff_B1 = jnp.where(top_p < 1.0, cutoff_B1, -jnp.inf)  # top_p = 1 keeps the whole tail despite rounding
  logits = jnp.where(logits < cutoff_B1, -jnp.inf, logits)
  sampled_B = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
  return jnp.where(temperature <= 0, greedy_B, sampled_B)


def _next_token(logits_BV, rng, temperature, top_k, top_p, *, greedy: bool):
  """Greedy decoding (known on the host) compiles to an argmax alone; sampling to the full filter."""
  if greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return sample_logits(logits_BV, rng, temperature, top_k, top_p)


def _apply_last(model, params, cfg, cache, tokens_BT, positions_BT, stream_sinks):
  """One cached forward pass; logits [B, V] of the last position only (the others are never sampled)."""
  hidden_BTD, cache = model.apply(
    {"params": params}, tokens_BT, positions=positions_BT, cache=cache, stream_sinks=stream_sinks, return_hidden=True
  )
  h_BD = hidden_BTD[:, -1]
  if cfg.tie_embeddings:  # contract with the [V, D] table as stored (no transposed copy inside the loop)
    logits_BV = jnp.einsum("bd,vd->bv", h_BD, params["embed"]["embedding"].astype(h_BD.dtype))
  else:
    logits_BV = h_BD @ params["lm_head"].astype(h_BD.dtype)
  return logits_BV.astype(jnp.float32), cache


@functools.partial(jax.jit, static_argnames=("cfg", "stream_sinks"))
def _feed(params, cache, tokens_BT, positions_BT, *, cfg: ModelConfig, stream_sinks):
  logits, cache = LanguageModel(cfg).apply(
    {"params": params}, tokens_BT, positions=positions_BT, cache=cache, stream_sinks=stream_sinks
  )
  return logits, cache


def _sample_loop(
  model,
  params,
  cfg,
  cache,
  last_logits_BV,
  next_pos_B,
  stop_ids,
  rng,
  temperature,
  top_k,
  top_p,
  *,
  stream_sinks,
  max_new_tokens,
  greedy,
):
  B = last_logits_BV.shape[0]
  out = jnp.zeros((B, max_new_tokens), jnp.int32)

  def cond(c):
    i, _, _, _, done, _, _ = c
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(c):
    i, cache, logits, pos, done, out, rng = c
    rng, sub = jax.random.split(rng)
    tok = _next_token(logits, sub, temperature, top_k, top_p, greedy=greedy)
    out = out.at[:, i].set(jnp.where(done, -1, tok))
    done = done | jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    new_logits, cache = _apply_last(model, params, cfg, cache, tok[:, None], pos[:, None], stream_sinks)
    return i + 1, cache, new_logits, pos + 1, done, out, rng

  init = (jnp.int32(0), cache, last_logits_BV, next_pos_B, jnp.zeros((B,), bool), out, rng)
  n, _, _, _, _, out, _ = jax.lax.while_loop(cond, body, init)
  return out, n


@functools.partial(jax.jit, static_argnames=("cfg", "stream_sinks", "max_new_tokens", "greedy"))
def _decode_loop(
  params,
  cache,
  last_logits_BV,
  next_pos_B,
  stop_ids,
  rng,
  temperature,
  top_k,
  top_p,
  *,
  cfg,
  stream_sinks,
  max_new_tokens,
  greedy=False,
):
  return _sample_loop(
    LanguageModel(cfg),
    params,
    cfg,
    cache,
    last_logits_BV,
    next_pos_B,
    stop_ids,
    rng,
    temperature,
    top_k,
    top_p,
    stream_sinks=stream_sinks,
    max_new_tokens=max_new_tokens,
    greedy=greedy,
  )


@functools.partial(jax.jit, static_argnames=("cfg", "stream_sinks", "max_new_tokens", "greedy", "cache_len"))
def _generate_on_device(
  params,
  chunks_NBC,
  chunk_pos_NBC,
  next_pos_B,
  stop_ids,
  rng,
  temperature,
  top_k,
  top_p,
  *,
  cfg,
  stream_sinks,
  max_new_tokens,
  greedy,
  cache_len,
):
  """Prefill (N chunks of C tokens, scanned) and the sampling loop in one compiled program."""
  model = LanguageModel(cfg)
  cache = init_cache(cfg, chunks_NBC.shape[1], cache_len)

  def feed(cache, chunk):
    toks_BC, pos_BC = chunk
    logits_BV, cache = _apply_last(model, params, cfg, cache, toks_BC, pos_BC, stream_sinks)
    return cache, logits_BV

  if chunks_NBC.shape[0] == 1:  # the common case: no scan around a single chunk
    cache, last_BV = feed(cache, (chunks_NBC[0], chunk_pos_NBC[0]))
  else:
    cache, logits_NBV = jax.lax.scan(feed, cache, (chunks_NBC, chunk_pos_NBC))
    last_BV = logits_NBV[-1]
  return _sample_loop(
    model,
    params,
    cfg,
    cache,
    last_BV,
    next_pos_B,
    stop_ids,
    rng,
    temperature,
    top_k,
    top_p,
    stream_sinks=stream_sinks,
    max_new_tokens=max_new_tokens,
    greedy=greedy,
  )


def _left_pad(prompts, chunk: int, starts):
  """Tokens and positions [B, padded_len] (padded_len a multiple of `chunk`), padding at position -1."""
  B = len(prompts)
  longest = max(1, max(len(p) for p in prompts))
  padded_len = -(-longest // chunk) * chunk
  toks = np.zeros((B, padded_len), np.int32)
  pos = np.full((B, padded_len), -1, np.int32)
  for b, p in enumerate(prompts):
    if len(p):
      toks[b, padded_len - len(p) :] = p
      pos[b, padded_len - len(p) :] = starts[b] + np.arange(len(p))
  return toks, pos


def prefill(
  params,
  cfg: ModelConfig,
  cache,
  prompts: Sequence[Sequence[int]],
  *,
  chunk: int,
  stream_sinks=None,
  start_positions: Sequence[int] | None = None,
):
  """Feeds left-padded prompts through the cache in `chunk`-token pieces; returns (last logits, cache, next positions)."""
  B = len(prompts)
  starts = np.zeros(B, np.int64) if start_positions is None else np.asarray(start_positions)
  toks, pos = _left_pad(prompts, chunk, starts)
  last = None
  for s in range(0, toks.shape[1], chunk):
    logits, cache = _feed(
      params,
      cache,
      jnp.asarray(toks[:, s : s + chunk]),
      jnp.asarray(pos[:, s : s + chunk]),
      cfg=cfg,
      stream_sinks=stream_sinks,
    )
    last = logits[:, -1]
  next_pos = starts + np.array([len(p) for p in prompts])
  return last, cache, jnp.asarray(next_pos, jnp.int32)


def generate(
  params,
  cfg: ModelConfig,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  stop_ids: Sequence[int] = (),
  seed: int = 0,
  cache_len: int | None = None,
  stream_sinks: int | None = None,
  prefill_chunk: int = 64,
) -> list[list[int]]:
  """Continuations for each prompt (stop token included when hit, nothing after it).

  A linear cache takes the whole prompt in one chunk (padded to a multiple of `prefill_chunk`, which
  bounds the number of compiled shapes); a streaming cache (`stream_sinks`) in `prefill_chunk` pieces.
  """
  if not prompts:
    return []
  if any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token (e.g. start with the tokenizer's EOS id)")
  longest = max(len(p) for p in prompts)
  if stream_sinks is None:
    cache_len = cache_len or min(cfg.max_len, longest + max_new_tokens)
    if cfg.has_attention and longest + max_new_tokens > cache_len:
      raise ValueError(
        f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the cache ({cache_len}); "
        "shorten the prompt, lower max_new_tokens, or use stream_sinks=4 (attention sinks) to stream"
      )
    toks, pos = _left_pad(prompts, prefill_chunk, np.zeros(len(prompts), np.int64))
    toks, pos = toks[None], pos[None]  # one chunk
  else:
    cache_len = cache_len or cfg.max_len
    chunk = min(prefill_chunk, cache_len - stream_sinks)
    toks, pos = _left_pad(prompts, chunk, np.zeros(len(prompts), np.int64))
    n = toks.shape[1] // chunk
    toks = toks.reshape(len(prompts), n, chunk).transpose(1, 0, 2)
    pos = pos.reshape(len(prompts), n, chunk).transpose(1, 0, 2)
  next_pos = jnp.asarray([len(p) for p in prompts], jnp.int32)
  stop = jnp.asarray(list(stop_ids) or [-2], jnp.int32)
  greedy = float(temperature) <= 0.0
  out, _ = _generate_on_device(
    params,
    jnp.asarray(toks),
    jnp.asarray(pos),
    next_pos,
    stop,
    jax.random.key(seed),
    jnp.float32(temperature),
    jnp.int32(top_k),
    jnp.float32(top_p),
    cfg=cfg,
    stream_sinks=stream_sinks,
    max_new_tokens=int(max_new_tokens),
    greedy=greedy,
    cache_len=int(cache_len),
  )
  result = []
  for row in np.asarray(out):
    row = row[row >= 0].tolist()
    result.append(row)
  return result


def greedy_generate_fn(params, cfg: ModelConfig, cache_len: int | None = None):
  """The `generate_fn(prompts, max_new_tokens, stop_ids)` callable that evaluation tasks expect."""

  def fn(prompts, max_new_tokens, stop_ids):
    budget = cfg.max_len - max_new_tokens
    prompts = [p[-budget:] for p in prompts]  # left-truncate to fit the context
    return generate(params, cfg, prompts, max_new_tokens=max_new_tokens, stop_ids=stop_ids, cache_len=cache_len)

  return fn


def streaming_nll(
  params, cfg: ModelConfig, tokens: Sequence[int], *, cache_len: int, stream_sinks: int | None, chunk: int = 16
) -> np.ndarray:
  """Per-token negative log-likelihood when a long text is fed through a bounded cache.

  With `stream_sinks=None` the cache is a plain sliding window (no sinks: the first tokens fall out),
  which is the baseline StreamingLLM compares against.
  """
  toks = np.asarray(tokens, np.int32)
  cache = init_cache(cfg, 1, cache_len)
  sinks = stream_sinks if stream_sinks is not None else 0
  chunk = min(chunk, cache_len - sinks)
  nll = []
  for s in range(0, len(toks) - 1, chunk):
    piece = toks[s : s + chunk]
    n = len(piece)
    t = np.zeros((1, chunk), np.int32)
    p = np.full((1, chunk), -1, np.int32)
    t[0, :n], p[0, :n] = piece, np.arange(s, s + n)
    logits, cache = _feed(params, cache, jnp.asarray(t), jnp.asarray(p), cfg=cfg, stream_sinks=sinks)
    logp = jax.nn.log_softmax(logits[0, :n], axis=-1)
    targets = toks[s + 1 : s + n + 1]
    nll.extend((-np.asarray(logp)[np.arange(len(targets)), targets]).tolist())
  return np.asarray(nll)


def sample_from_config(params, cfg, sample_cfg, prompt_ids, *, eos_id: int, seed: int) -> list[int]:
  """The continuation of `prompt_ids` under a run's `sample` settings (temperature, top_k, top_p,
  max_new_tokens), the prompt's left end dropped so prompt and continuation fit in `cfg.max_len`."""
  budget = max(1, cfg.max_len - int(sample_cfg.max_new_tokens))
  out = generate(
    params,
    cfg,
    [list(prompt_ids)[-budget:]],
    max_new_tokens=int(sample_cfg.max_new_tokens),
    temperature=float(sample_cfg.temperature),
    top_k=int(sample_cfg.top_k),
    top_p=float(sample_cfg.top_p),
    stop_ids=[eos_id],
    seed=int(seed),
  )[0]
  return [t for t in out if t != eos_id]


if __name__ == "__main__":  # `python -m modernlm_jax.generate ...`: the command lives in generate_cli (a layer up)
  from modernlm_jax.generate_cli import main

  raise SystemExit(main())

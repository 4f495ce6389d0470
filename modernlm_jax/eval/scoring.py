"""Batched log-likelihood scoring on top of a model-agnostic ``forward_fn``.

Evaluation never touches parameters; it calls
``forward_fn(tokens_BT, positions_BT, segment_ids_BT) -> logits_BTV`` (float32). Rows are
right-padded, padding gets ``segment_ids == 0`` and is masked out of every sum.

Public API
----------
``loglikelihood(forward_fn, requests, *, context, batch_size, progress=None)
    -> list[tuple[float, bool]]``
    For each ``(context_ids, continuation_ids)``: the summed log-probability (nats) of the
    continuation given the context, and whether the continuation is the greedy one.
``score_requests(...) -> ScoredRequests``
    Same, plus per-request token counts and a left-truncation flag (requests longer than
    ``context + 1`` tokens keep their rightmost tokens, as in lm-evaluation-harness).
``encode_pair(tokenizer, context, continuation) -> (context_ids, continuation_ids)``
    Tokenizes a context/continuation pair so the continuation tokens are exactly the tail of
    the jointly-encoded text (a trailing space of the context moves into the continuation).
``score_rows(...)``: the low-level batched scorer shared with strided perplexity.
``token_logprobs(logits_BTV, targets_BT)``: jitted per-token log-prob and greedy flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ForwardFn = Callable[[Any, Any, Any], Any]
Progress = Callable[[str], None] | None


@jax.jit
def token_logprobs(logits_BTV: jax.Array, targets_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log p(target) and argmax==target per position, computed on device.

  Uses logsumexp instead of a full log_softmax so only one [B,T,V] array is live.
  """
  logits_BTV = logits_BTV.astype(jnp.float32)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  logprob_BT = target_logit_BT - jax.nn.logsumexp(logits_BTV, axis=-1)
  greedy_BT = jnp.argmax(logits_BTV, axis=-1) == targets_BT
  return logprob_BT, greedy_BT


@dataclasses.dataclass(frozen=True)
class Row:
  """One scored row: model inputs, next-token targets, and the first target index to count."""

  inputs: np.ndarray
  targets: np.ndarray
  score_from: int


def _report(progress: Progress, label: str, done: int, total: int, every: int) -> None:
  if progress is not None and (done == total or done % every == 0):
    progress(f"{label} {done}/{total}")


def score_rows(
  forward_fn: ForwardFn,
  rows: Sequence[Row],
  *,
  seq_len: int | Callable[[int], int],
  batch_size: int,
  progress: Progress = None,
  label: str = "scoring",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scores rows in batches of exactly ``batch_size`` (missing rows are all padding).

  ``seq_len`` is either a fixed padded length or a function of the longest row in a batch,
  so callers control how many distinct shapes (= compilations) the jitted model sees.
  Returns per-row (sum log-prob in float64, all-greedy flag, number of scored tokens).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = len(rows)
  sum_lp = np.zeros(n, np.float64)
  all_greedy = np.ones(n, bool)
  counts = np.zeros(n, np.int64)
  num_batches = -(-n // batch_size)
  every = max(1, num_batches // 10)
  for b in range(num_batches):
    batch = rows[b * batch_size : (b + 1) * batch_size]
    longest = max(len(r.inputs) for r in batch)
    T = seq_len(longest) if callable(seq_len) else seq_len
    if longest > T:
      raise ValueError(f"row of length {longest} does not fit padded length {T}")
    tokens_BT = np.zeros((batch_size, T), np.int32)
    targets_BT = np.zeros((batch_size, T), np.int32)
    segment_ids_BT = np.zeros((batch_size, T), np.int32)
    mask_BT = np.zeros((batch_size, T), bool)
    for i, r in enumerate(batch):
      L = len(r.inputs)
      tokens_BT[i, :L] = r.inputs
      targets_BT[i, :L] = r.targets
      segment_ids_BT[i, :L] = 1
      mask_BT[i, r.score_from : L] = True
    positions_BT = np.broadcast_to(np.arange(T, dtype=np.int32), (batch_size, T))
    logits_BTV = forward_fn(jnp.asarray(tokens_BT), jnp.asarray(positions_BT), jnp.asarray(segment_ids_BT))
    vocab = logits_BTV.shape[-1]
    if max(tokens_BT.max(), targets_BT.max()) >= vocab:
      raise ValueError(
        f"token id {max(tokens_BT.max(), targets_BT.max())} >= model vocab size {vocab}: "
        "the tokenizer does not match the checkpoint; evaluate with the checkpoint's tokenizer"
      )
    lp_BT, greedy_BT = jax.device_get(token_logprobs(logits_BTV, jnp.asarray(targets_BT)))
    lp_BT = np.asarray(lp_BT, np.float64)
    for i in range(len(batch)):
      m = mask_BT[i]
      k = b * batch_size + i
      sum_lp[k] = lp_BT[i][m].sum()
      all_greedy[k] = bool(np.all(greedy_BT[i][m]))
      counts[k] = int(m.sum())
    _report(progress, label, b + 1, num_batches, every)
  return sum_lp, all_greedy, counts


def bucket_length(length: int, context: int, minimum: int = 16) -> int:
  """Next power of two (>= minimum), capped at ``context``: few shapes, little padding."""
  T = minimum
  while T < length:
    T *= 2
  return min(T, max(context, length))


@dataclasses.dataclass(frozen=True)
class ScoredRequests:
  logprob: np.ndarray  # float64 [N], summed over continuation tokens (nats)
  is_greedy: np.ndarray  # bool [N]
  num_tokens: np.ndarray  # int [N], continuation length in tokens
  truncated: np.ndarray  # bool [N], context was left-truncated to fit

  @property
  def num_truncated(self) -> int:
    return int(self.truncated.sum())

  def as_tuples(self) -> list[tuple[float, bool]]:
    return [(float(lp), bool(g)) for lp, g in zip(self.logprob, self.is_greedy)]


def score_requests(
  forward_fn: ForwardFn,
  requests: Sequence[tuple[Sequence[int], Sequence[int]]],
  *,
  context: int,
  batch_size: int,
  progress: Progress = None,
  label: str = "loglikelihood",
) -> ScoredRequests:
  """Scores (context_ids, continuation_ids) pairs; see module docstring."""
  if context < 1:
    raise ValueError(f"context must be >= 1, got {context}")
  rows: list[Row] = []
  truncated = np.zeros(len(requests), bool)
  num_tokens = np.zeros(len(requests), np.int64)
  for i, (ctx, cont) in enumerate(requests):
    ctx, cont = list(ctx), list(cont)
    if not cont:
      raise ValueError(f"request {i}: empty continuation; nothing to score")
    if not ctx:
      raise ValueError(
        f"request {i}: empty context; prepend the tokenizer's eos_id "
        "so the first continuation token has something to condition on"
      )
    if len(cont) > context:
      raise ValueError(
        f"request {i}: continuation has {len(cont)} tokens but the context "
        f"window is {context}; raise context or shorten the continuation"
      )
    whole = ctx + cont
    if len(whole) - 1 > context:
      truncated[i] = True
      whole = whole[-(context + 1) :]
    inputs = np.asarray(whole[:-1], np.int32)
    rows.append(Row(inputs, np.asarray(whole[1:], np.int32), len(inputs) - len(cont)))
    num_tokens[i] = len(cont)
  # Longest first so each batch pads to a similar length; results are put back in order.
  order = sorted(range(len(rows)), key=lambda k: -len(rows[k].inputs))
  sum_lp, greedy, _ = score_rows(
    forward_fn,
    [rows[k] for k in order],
    seq_len=lambda L: bucket_length(L, context),
    batch_size=batch_size,
    progress=progress,
    label=label,
  )
  logprob = np.zeros(len(rows), np.float64)
  is_greedy = np.zeros(len(rows), bool)
  logprob[order] = sum_lp
  is_greedy[order] = greedy
  return ScoredRequests(logprob, is_greedy, num_tokens, truncated)


def loglikelihood(
  forward_fn: ForwardFn,
  requests: Sequence[tuple[Sequence[int], Sequence[int]]],
  *,
  context: int,
  batch_size: int,
  progress: Progress = None,
) -> list[tuple[float, bool]]:
  """(sum log-prob of continuation | context, is greedy) per request, in request order."""
  return score_requests(forward_fn, requests, context=context, batch_size=batch_size, progress=progress).as_tuples()


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """Encodes so that context_ids + continuation_ids tokenizes the joined text.

  BPE merges across the boundary, so the continuation is taken as the tail of the joint
  encoding when the context encoding is its prefix; otherwise the two are encoded apart.
  """
  n_spaces = len(context) - len(context.rstrip(" "))
  if n_spaces:
    continuation = context[-n_spaces:] + continuation
    context = context[:-n_spaces]
  whole = list(tokenizer.encode(context + continuation))
  ctx = list(tokenizer.encode(context))
  if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
    return ctx, whole[len(ctx) :]
  return ctx, list(tokenizer.encode(continuation))

"""Fused linear cross-entropy: the vocabulary projection, softmax cross-entropy and its gradient in one pass.

The loss is the last operation of the step, so its gradient with respect to the logits is known in the
forward pass up to the scalar cotangent of the loss: softmax(logits) − onehot(target), times the token's
mask. For each chunk of tokens this computes logits = h·W, the chunk's loss terms, that gradient, and at
once the two matmuls of the backward pass (dh = g·Wᵀ, dW += hᵀ·g). Only one chunk of logits ever
exists, nothing is recomputed (three matmuls, as for full logits), and the backward pass is a scaling.

Differentiable output: `total = Σ mask·nll + z_coef · Σ mask·logsumexp²`. The other two outputs (the
nll and z sums) are metrics: their cotangents are ignored, so differentiate `total` only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Output widths that are a multiple of 128 run on whole tensor-core tiles (GPT-2's 50257 does not).
VOCAB_ALIGN = 128


def pad_vocab(w_DV, dtype):
  """W in the compute dtype with zero columns up to a multiple of VOCAB_ALIGN, and the real width."""
  V = w_DV.shape[-1]
  return jnp.pad(w_DV.astype(dtype), ((0, 0), (0, (-V) % VOCAB_ALIGN))), V


def masked_logits(h_ND, w_DVp, V: int, logits_dtype=jnp.float32):
  """float32 logits of the padded projection, padded columns at -inf so the softmax ignores them."""
  logits = jnp.einsum("nd,dv->nv", h_ND, w_DVp, preferred_element_type=logits_dtype).astype(jnp.float32)
  if w_DVp.shape[-1] != V:
    logits = jnp.where(jnp.arange(w_DVp.shape[-1]) < V, logits, -jnp.inf)
  return logits


def _chunks(x, n: int, size: int):
  pad = n * size - x.shape[0]
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(n, size, *x.shape[1:])


def _forward_and_grads(h_ND, w_DV, targets_N, mask_N, chunk: int, z_coef: float):
  N, D = h_ND.shape
  w_DVp, V = pad_vocab(w_DV, h_ND.dtype)
  size = min(chunk, N) if chunk > 0 else N
  n = -(-N // size)
  xs = (_chunks(h_ND, n, size), _chunks(targets_N, n, size), _chunks(mask_N.astype(jnp.float32), n, size))

  def body(dW_DVp, x):
    h, t, m = x
    logits = masked_logits(h, w_DVp, V)
    lse = jax.nn.logsumexp(logits, axis=-1)
    p = jnp.exp(logits - lse[:, None])
    onehot = jnp.arange(w_DVp.shape[-1])[None, :] == t[:, None]
    target_logit = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    # d total / d logits = m·(p − onehot) + z_coef·m·2·lse·p
    g = (m * (1.0 + 2.0 * z_coef * lse))[:, None] * p - jnp.where(onehot, m[:, None], 0.0)
    g = g.astype(h.dtype)
    dh = jnp.einsum("nv,dv->nd", g, w_DVp, preferred_element_type=jnp.float32).astype(h.dtype)
    dW_DVp = dW_DVp + jnp.einsum("nd,nv->dv", h, g, preferred_element_type=jnp.float32)
    sums = jnp.stack([jnp.sum(m * (lse - target_logit)), jnp.sum(m * lse * lse)])
    return dW_DVp, (sums, dh)

  dW_DVp, (sums, dh) = jax.lax.scan(body, jnp.zeros(w_DVp.shape, jnp.float32), xs)
  nll, z = jnp.sum(sums[:, 0]), jnp.sum(sums[:, 1])
  dh_ND = dh.reshape(n * size, D)[:N]
  return (nll + z_coef * z, nll, z), (dh_ND, dW_DVp[:, :V].astype(w_DV.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_cross_entropy(h_ND, w_DV, targets_N, mask_N, chunk: int = 4096, z_coef: float = 0.0):
  """(total, nll_sum, z_sum) over N tokens; see the module docstring. h is in the compute dtype."""
  return _forward_and_grads(h_ND, w_DV, targets_N, mask_N, chunk, z_coef)[0]


def _fwd(h_ND, w_DV, targets_N, mask_N, chunk, z_coef):
  out, (dh, dW) = _forward_and_grads(h_ND, w_DV, targets_N, mask_N, chunk, z_coef)
  return out, (dh, dW, targets_N, mask_N)


def _zero_cotangent(x):
  return jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.zeros(x.shape, jax.dtypes.float0)


def _bwd(chunk, z_coef, res, cotangents):
  dh, dW, targets_N, mask_N = res
  g_total = cotangents[0]  # the metric outputs' cotangents are ignored (module docstring)
  return (
    (g_total * dh).astype(dh.dtype),
    (g_total * dW).astype(dW.dtype),
    _zero_cotangent(targets_N),
    _zero_cotangent(mask_N),
  )


fused_cross_entropy.defvjp(_fwd, _bwd)


def cross_entropy_terms(hidden_BTD, w_DV, targets_BT, chunk: int = 0):
  """(logsumexp, target logit) per position, float32 — for losses that need per-token terms (DPO, eval).

  With `chunk > 0`, the vocabulary projection runs over `chunk`-token slices of the flattened batch under
  jax.checkpoint, so neither forward nor backward ever holds float32 logits for the whole batch. The
  next-token objective uses `fused_ce.fused_cross_entropy` instead, which also skips the recompute.
  """
  B, T, D = hidden_BTD.shape
  w, V = pad_vocab(w_DV, hidden_BTD.dtype)

  def terms(h_ND, t_N):
    logits = masked_logits(h_ND, w, V)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return lse, jnp.take_along_axis(logits, t_N[:, None], axis=-1)[:, 0]

  h_ND, t_N = hidden_BTD.reshape(B * T, D), targets_BT.reshape(B * T)
  if chunk <= 0 or chunk >= B * T:
    lse, tl = terms(h_ND, t_N)
  else:
    n = -(-(B * T) // chunk)
    pad = n * chunk - B * T
    h_NCD = jnp.pad(h_ND, ((0, pad), (0, 0))).reshape(n, chunk, D)
    t_NC = jnp.pad(t_N, (0, pad)).reshape(n, chunk)
    lse, tl = jax.lax.map(lambda args: jax.checkpoint(terms)(*args), (h_NCD, t_NC))
    lse, tl = lse.reshape(-1)[: B * T], tl.reshape(-1)[: B * T]
  return lse.reshape(B, T), tl.reshape(B, T)

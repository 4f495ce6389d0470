"""Flash attention of ours in Pallas (Triton on NVIDIA GPUs; Pallas' interpreter on CPU for tests).

One kernel covers every option the families train with, so they are all timed on the same path:
causal masking, packed documents (segment ids: a query sees only keys of its own segment), ALiBi
(an additive bias -slope_h·|pos_q - pos_k| computed in the kernel from per-head slopes and the
token positions: never a materialised [T, T] tensor), and per-head attention sinks (a learned logit
that joins the softmax with a zero value; it starts the running max/sum, so it costs nothing per key).

Forward: one program per (batch, head, query block) walks the key blocks up to the diagonal with an
online softmax and writes the output and the row log-sum-exp. Backward (FlashAttention-2 style):
one program per key block accumulates dK/dV over the query blocks at or below it; one program per
query block accumulates dQ; the sink gradient is a cheap reduction outside the kernels
(d sink_h = -Σ_rows p_sink · Σ_d(o · do)). ALiBi slopes are constants and get no gradient.

Layout inside: [B, H, T, Dh]. Sequences are padded at the end to a multiple of the block: padded keys
sit after every real query, so causality already hides them, and padded query rows are sliced off.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_NEG_INF = -1e30  # finite, as in the reference: masked scores never make inf - inf
DEFAULT_BLOCK = 64  # Triton tile edge; 64×64 fits every head size we use (≤ 128) in shared memory


def _block_for(seq_len: int, block: int) -> int:
  """The tile edge: `block`, or the sequence rounded up to a power of two (≥ 16, Triton's minimum) if shorter."""
  if seq_len >= block:
    return block
  return max(16, pl.next_power_of_2(seq_len))


def _compiler_params(interpret: bool, num_warps: int, num_stages: int):
  if interpret:
    return None
  from jax.experimental.pallas import triton as plgpu

  return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _scores(q, k, scale, q_idx, k_idx, qseg, kseg, qal, kal):
  """Scaled, biased scores [bq, bk] in float32 and the boolean mask of allowed (query, key) pairs."""
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
  mask = k_idx[None, :] <= q_idx[:, None]
  if qseg is not None:
    mask = mask & (qseg[:, None] == kseg[None, :])
  if qal is not None:
    s = s - jnp.abs(qal[:, None] - kal[None, :])  # qal/kal are slope·position: |slope·Δpos| for slope > 0
  return s, mask


def _unpack(refs, has_seg, has_alibi):
  refs = list(refs)
  seg = (refs.pop(0), refs.pop(0)) if has_seg else (None, None)
  alibi = (refs.pop(0), refs.pop(0)) if has_alibi else (None, None)
  return seg, alibi, refs


def _load(ref, sl=None):
  if ref is None:
    return None
  return ref[...] if sl is None else ref[sl]


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, scale, bq, bk, has_seg, has_alibi, has_sink):
  (qseg_ref, kseg_ref), (qal_ref, kal_ref), rest = _unpack(refs, has_seg, has_alibi)
  if has_sink:
    sink_ref, o_ref, lse_ref = rest
  else:
    (o_ref, lse_ref), sink_ref = rest, None
  i = pl.program_id(2)
  q = q_ref[...]
  q_idx = i * bq + jnp.arange(bq, dtype=jnp.int32)
  qseg, qal = _load(qseg_ref), _load(qal_ref)
  if has_sink:  # the sink is a key with logit `sink` and value 0: it seeds the running max and sum
    m = sink_ref[...].astype(jnp.float32)
    l = jnp.ones((bq,), jnp.float32)
  else:
    m = jnp.full((bq,), _NEG_INF, jnp.float32)
    l = jnp.zeros((bq,), jnp.float32)
  acc = jnp.zeros(o_ref.shape, jnp.float32)

  def body(j, carry):
    m, l, acc = carry
    sl = pl.ds(j * bk, bk)
    k, v = k_ref[sl, :], v_ref[sl, :]
    k_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)
    s, mask = _scores(q, k, scale, q_idx, k_idx, qseg, _load(kseg_ref, sl), qal, _load(kal_ref, sl))
    m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, _NEG_INF), axis=1))
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    alpha = jnp.exp(m - m_new)
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + jax.lax.dot_general(
      p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    return m_new, l, acc

  n_kv = pl.cdiv((i + 1) * bq, bk)  # causal: no key block past the diagonal
  m, l, acc = jax.lax.fori_loop(0, n_kv, body, (m, l, acc))
  l_safe = jnp.where(l == 0.0, 1.0, l)  # a row with no visible key (never in causal training) outputs 0
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l_safe)


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, scale, bq, bk, n_q, has_seg, has_alibi):
  (qseg_ref, kseg_ref), (qal_ref, kal_ref), (dk_ref, dv_ref) = _unpack(refs, has_seg, has_alibi)
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  k_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)
  kseg, kal = _load(kseg_ref), _load(kal_ref)

  def body(i, carry):
    dk, dv = carry
    sl = pl.ds(i * bq, bq)
    q, do = q_ref[sl, :], do_ref[sl, :]
    q_idx = i * bq + jnp.arange(bq, dtype=jnp.int32)
    s, mask = _scores(q, k, scale, q_idx, k_idx, _load(qseg_ref, sl), kseg, _load(qal_ref, sl), kal)
    p = jnp.where(mask, jnp.exp(s - lse_ref[sl][:, None]), 0.0)
    dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = p * (dp - delta_ref[sl][:, None])
    dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dk, dv

  zeros = jnp.zeros(dk_ref.shape, jnp.float32)
  first_q = (j * bk) // bq  # causal: query blocks above this key block see none of it
  dk, dv = jax.lax.fori_loop(first_q, n_q, body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, scale, bq, bk, has_seg, has_alibi):
  (qseg_ref, kseg_ref), (qal_ref, kal_ref), (dq_ref,) = _unpack(refs, has_seg, has_alibi)
  i = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_idx = i * bq + jnp.arange(bq, dtype=jnp.int32)
  qseg, qal = _load(qseg_ref), _load(qal_ref)

  def body(j, dq):
    sl = pl.ds(j * bk, bk)
    k, v = k_ref[sl, :], v_ref[sl, :]
    k_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)
    s, mask = _scores(q, k, scale, q_idx, k_idx, qseg, _load(kseg_ref, sl), qal, _load(kal_ref, sl))
    p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None])
    return dq + jax.lax.dot_general(ds.astype(k.dtype), k, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)

  dq = jax.lax.fori_loop(0, pl.cdiv((i + 1) * bq, bk), body, jnp.zeros(dq_ref.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _specs(block, T, Dh, blocked: bool):
  """BlockSpecs for [B, H, T, Dh] tensors and [B, T] / [B, H, T] row vectors: one `block` of rows or all T."""
  sq = pl.squeezed
  if blocked:
    mat = pl.BlockSpec((sq, sq, block, Dh), lambda b, h, i: (b, h, i, 0))
    vec_bt = pl.BlockSpec((sq, block), lambda b, h, i: (b, i))
    vec_bht = pl.BlockSpec((sq, sq, block), lambda b, h, i: (b, h, i))
  else:
    mat = pl.BlockSpec((sq, sq, T, Dh), lambda b, h, i: (b, h, 0, 0))
    vec_bt = pl.BlockSpec((sq, T), lambda b, h, i: (b, 0))
    vec_bht = pl.BlockSpec((sq, sq, T), lambda b, h, i: (b, h, 0))
  return mat, vec_bt, vec_bht


def _extras(seg, alibi, bq, bk, T, *, q_blocked: bool):
  """(arrays, specs) for the optional inputs: the query side and the key side of each, one of them blocked."""
  arrays, specs = [], []
  _, q_bt, q_bht = _specs(bq, T, 0, q_blocked)
  _, k_bt, k_bht = _specs(bk, T, 0, not q_blocked)
  if seg is not None:
    arrays += [seg, seg]
    specs += [q_bt, k_bt]
  if alibi is not None:
    arrays += [alibi, alibi]
    specs += [q_bht, k_bht]
  return arrays, specs


def _forward(q, k, v, seg, alibi, sink, *, block, interpret, num_warps, num_stages):
  B, H, T, Dh = q.shape
  bq = bk = block
  scale = 1.0 / math.sqrt(Dh)
  qspec, _, vbht = _specs(bq, T, Dh, True)
  kvspec, _, _ = _specs(bk, T, Dh, False)
  arrays, specs = _extras(seg, alibi, bq, bk, T, q_blocked=True)
  if sink is not None:
    arrays.append(jnp.broadcast_to(sink.astype(jnp.float32)[None, :, None], (B, H, T)))
    specs.append(vbht)
  kernel = functools.partial(
    _fwd_kernel,
    scale=scale,
    bq=bq,
    bk=bk,
    has_seg=seg is not None,
    has_alibi=alibi is not None,
    has_sink=sink is not None,
  )
  return pl.pallas_call(
    kernel,
    grid=(B, H, T // bq),
    in_specs=[qspec, kvspec, kvspec] + specs,
    out_specs=[qspec, vbht],
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, T), jnp.float32)],
    interpret=interpret,
    compiler_params=_compiler_params(interpret, num_warps, num_stages),
    name="flash_attention_fwd",
  )(q, k, v, *arrays)


def _backward(q, k, v, o, lse, do, seg, alibi, *, block, interpret, num_warps, num_stages):
  B, H, T, Dh = q.shape
  bq = bk = block
  scale = 1.0 / math.sqrt(Dh)
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)  # [B, H, T]
  params = _compiler_params(interpret, num_warps, num_stages)
  flags = dict(scale=scale, bq=bq, bk=bk, has_seg=seg is not None, has_alibi=alibi is not None)

  whole_mat, _, whole_vec = _specs(bq, T, Dh, False)
  kblk_mat, _, _ = _specs(bk, T, Dh, True)
  arrays, specs = _extras(seg, alibi, bq, bk, T, q_blocked=False)
  dk, dv = pl.pallas_call(
    functools.partial(_dkdv_kernel, n_q=T // bq, **flags),
    grid=(B, H, T // bk),
    in_specs=[whole_mat, kblk_mat, kblk_mat, whole_mat, whole_vec, whole_vec] + specs,
    out_specs=[kblk_mat, kblk_mat],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    interpret=interpret,
    compiler_params=params,
    name="flash_attention_dkdv",
  )(q, k, v, do, lse, delta, *arrays)

  qblk_mat, _, qblk_vec = _specs(bq, T, Dh, True)
  arrays, specs = _extras(seg, alibi, bq, bk, T, q_blocked=True)
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, **flags),
    grid=(B, H, T // bq),
    in_specs=[qblk_mat, whole_mat, whole_mat, qblk_mat, qblk_vec, qblk_vec] + specs,
    out_specs=qblk_mat,
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    interpret=interpret,
    compiler_params=params,
    name="flash_attention_dq",
  )(q, k, v, do, lse, delta, *arrays)
  return dq, dk, dv, delta


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _flash_bhtd(q, k, v, seg, alibi, sink, block, interpret, num_warps, num_stages):
  o, _ = _forward(
    q, k, v, seg, alibi, sink, block=block, interpret=interpret, num_warps=num_warps, num_stages=num_stages
  )
  return o


def _flash_fwd(q, k, v, seg, alibi, sink, block, interpret, num_warps, num_stages):
  o, lse = _forward(
    q, k, v, seg, alibi, sink, block=block, interpret=interpret, num_warps=num_warps, num_stages=num_stages
  )
  return o, (q, k, v, seg, alibi, sink, o, lse)


def _flash_bwd(block, interpret, num_warps, num_stages, res, do):
  q, k, v, seg, alibi, sink, o, lse = res
  dq, dk, dv, delta = _backward(
    q, k, v, o, lse, do, seg, alibi, block=block, interpret=interpret, num_warps=num_warps, num_stages=num_stages
  )
  dseg = None if seg is None else jnp.zeros_like(seg)
  dalibi = None if alibi is None else jnp.zeros_like(alibi)  # slopes are fixed, not learned
  dsink = None
  if sink is not None:  # d sink_h = Σ_rows p_sink (dp_sink - delta), with dp_sink = do · 0 = 0
    p_sink = jnp.exp(sink.astype(jnp.float32)[None, :, None] - lse)
    dsink = (-jnp.sum(p_sink * delta, axis=(0, 2))).astype(sink.dtype)
  return dq, dk, dv, dseg, dalibi, dsink


_flash_bhtd.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
  q_BTHD,
  k_BTHD,
  v_BTHD,
  *,
  segment_ids_BT=None,
  positions_BT=None,
  alibi_slopes_H=None,
  sink_H=None,
  block: int = DEFAULT_BLOCK,
  interpret: bool = False,
  num_warps: int = 4,
  num_stages: int = 2,
):
  """Causal softmax attention [B, T, H, Dh] -> [B, T, H, Dh] in q's dtype (float32 softmax statistics).

  `segment_ids_BT`: tokens attend only within their segment (packed documents). `alibi_slopes_H` with
  `positions_BT` (default 0..T-1): bias -slope_h·|pos_q - pos_k|. `sink_H`: per-head sink logits.
  `interpret=True` runs the same kernels through Pallas' interpreter (CPU tests).
  """
  B, T, H, Dh = q_BTHD.shape
  if k_BTHD.shape != q_BTHD.shape or v_BTHD.shape != q_BTHD.shape:
    raise ValueError(
      f"flash_attention needs q, k, v of one shape [B, T, H, Dh]; got {q_BTHD.shape}, "
      f"{k_BTHD.shape}, {v_BTHD.shape} (KV-cache decoding uses another kernel)"
    )
  blk = _block_for(T, block)
  T_pad = -(-T // blk) * blk
  pad = T_pad - T

  def to_bhtd(x):
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else x

  q, k, v = to_bhtd(q_BTHD), to_bhtd(k_BTHD), to_bhtd(v_BTHD)
  seg = None
  if segment_ids_BT is not None:
    seg = jnp.pad(segment_ids_BT.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=-1)
  alibi = None
  if alibi_slopes_H is not None:
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    pos = jnp.pad(positions_BT.astype(jnp.float32), ((0, 0), (0, pad)))
    alibi = alibi_slopes_H.astype(jnp.float32)[None, :, None] * pos[:, None, :]  # [B, H, T]: O(T), not O(T²)
    alibi = jax.lax.stop_gradient(alibi)
  out = _flash_bhtd(q, k, v, seg, alibi, sink_H, blk, interpret, num_warps, num_stages)
  return jnp.swapaxes(out[:, :, :T], 1, 2)

"""RWKV-6 ("Finch")-style time mix: data-dependent token shift and data-dependent per-channel decay.

Per head the state S [K, V] evolves as S_t = diag(w_t) S_{t-1} + k_t^T v_t, and the output reads it
before the update plus a per-channel "bonus" u for the current token: o_t = r_t (S_{t-1} + diag(u) k_t^T v_t).
The decay w_t = exp(-exp(wlog_t)) comes from the input through a low-rank projection, as do the five
token-shift interpolations (ddlerp) that mix x_t with x_{t-1}. Output: per-head GroupNorm, SiLU gate, out-proj.

Training uses a chunked form. With per-channel decays the [L, L] score matrix is not one matmul of
decay-scaled r and k unless the scaling factors stay bounded, so each chunk is cut into sub-blocks:
scores between different sub-blocks are a matmul with both factors referenced to the query block's start
(every exponent <= 0, so nothing overflows), and scores inside a sub-block are computed exactly
elementwise. Chunks pass their [H, K, V] state through `lax.scan`. Decoding is a single fused step with
an O(1) state: the WKV state and the last token (for the token shift).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from modernlm_jax.model.config import ModelConfig
from modernlm_jax.model.layers import compute_dtype, normal_init, param_with_axes, residual_init
from modernlm_jax.model.ssm import (
  DEFAULT_CHUNK,
  MIN_LOG_DECAY,
  carried_window,
  chunk_layout,
  chunk_run_masks,
  compaction,
  pad_time,
  scan_chunk_states,
  scan_with_resets,
  segment_runs,
  take_time,
)

DEFAULT_BLOCK = 16  # sub-block of the exact intra-block scores; the chunk must be a multiple of it
GROUP_NORM_EPS = 64e-5  # RWKV-6's ln_x epsilon (1e-5 * head_size_divisor**2)
MIX_BRANCHES = ("w", "k", "v", "r", "g")


def wkv6_chunked(
  r_BTHK,
  k_BTHK,
  v_BTHV,
  logw_BTHK,
  u_HK,
  *,
  runs_BT=None,
  state0_BHKV=None,
  chunk_size: int = DEFAULT_CHUNK,
  block_size: int = DEFAULT_BLOCK,
):
  """Chunked RWKV-6 recurrence in float32; `logw` is the per-step log decay (<= 0). Returns (o_BTHV, state)."""
  B, T, H, Kd = r_BTHK.shape
  V = v_BTHV.shape[-1]
  s = min(block_size, chunk_size)
  L, T_pad = chunk_layout(T, chunk_size, multiple=s)
  if L % s:
    raise ValueError(
      f"RWKV chunk length {L} must be a multiple of the sub-block {s}; use a chunk_size that "
      f"is a multiple of block_size={block_size}"
    )
  nc, nb = T_pad // L, L // s
  f32 = jnp.float32
  # Padding (logw = 0, k = 0) leaves the state untouched, so the final state is exact.
  r = pad_time(r_BTHK.astype(f32), T_pad).reshape(B, nc, L, H, Kd)
  k = pad_time(k_BTHK.astype(f32), T_pad).reshape(B, nc, L, H, Kd)
  v = pad_time(v_BTHV.astype(f32), T_pad).reshape(B, nc, L, H, V)
  lw = pad_time(logw_BTHK.astype(f32), T_pad).reshape(B, nc, L, H, Kd)
  same, from_prev, to_end_mask, carry = chunk_run_masks(pad_time(runs_BT, T_pad, mode="edge"), B, nc, L)

  inc = jnp.cumsum(lw, axis=2)  # log decay from the chunk start through token i
  exc = inc - lw  # ... up to, not including, token i (what the state read by token i has seen)
  # Query block I reads key j < start(I) with weight exp(exc_i - inc_j) = exp(exc_i - exc_I0) * exp(exc_I0 - inc_j):
  # both exponents are <= 0, so neither factor overflows.
  exc6 = exc.reshape(B, nc, nb, s, H, Kd)
  start_BCIHK = exc6[:, :, :, 0]
  q_off = r.reshape(B, nc, nb, s, H, Kd) * jnp.exp(exc6 - start_BCIHK[:, :, :, None])
  earlier_IL = jnp.arange(L)[None, :] < (jnp.arange(nb) * s)[:, None]
  # Mask the exponent, not the exponential: a masked (later) key has a positive exponent that could overflow.
  k_exp = jnp.where(earlier_IL[None, None, :, :, None, None], start_BCIHK[:, :, :, None] - inc[:, :, None], -jnp.inf)
  k_off = k[:, :, None] * jnp.exp(k_exp)  # [B, nc, nb, L, H, K]
  scores = jnp.einsum("bcIihk,bcIjhk->bcIijh", q_off, k_off).reshape(B, nc, L, L, H)

  # Inside a sub-block: exact per-channel weights for j < i, and the bonus u on the diagonal.
  inc6 = inc.reshape(B, nc, nb, s, H, Kd)
  strict_ss = jnp.tril(jnp.ones((s, s), bool), -1)
  d_exp = jnp.where(
    strict_ss[None, None, None, :, :, None, None], exc6[:, :, :, :, None] - inc6[:, :, :, None, :], -jnp.inf
  )
  r6, k6 = r.reshape(B, nc, nb, s, H, Kd), k.reshape(B, nc, nb, s, H, Kd)
  diag_BCIijH = jnp.sum(r6[:, :, :, :, None] * k6[:, :, :, None, :] * jnp.exp(d_exp), axis=-1)
  eye_II = jnp.eye(nb, dtype=f32)
  scores = scores + (diag_BCIijH[:, :, :, :, None] * eye_II[None, None, :, None, :, None, None]).reshape(B, nc, L, L, H)
  bonus_BCLH = jnp.einsum("bcihk,hk,bcihk->bcih", r, u_HK.astype(f32), k)
  scores = scores + bonus_BCLH[:, :, :, None, :] * jnp.eye(L, dtype=f32)[None, None, :, :, None]
  if same is not None:
    scores = jnp.where(same[..., None], scores, 0.0)
  o_intra = jnp.einsum("bcijh,bcjhv->bcihv", scores, v)

  k_to_end = k * jnp.exp(inc[:, :, -1:] - inc)
  if to_end_mask is not None:
    k_to_end = jnp.where(to_end_mask[..., None, None], k_to_end, 0.0)
  chunk_state = jnp.einsum("bcjhk,bcjhv->bchkv", k_to_end, v)
  chunk_decay_BCHK = jnp.exp(inc[:, :, -1])
  if carry is not None:
    chunk_decay_BCHK = jnp.where(carry[..., None, None], chunk_decay_BCHK, 0.0)
  state0 = jnp.zeros((B, H, Kd, V), f32) if state0_BHKV is None else state0_BHKV.astype(f32)
  starts_BCHKV, final = scan_chunk_states(chunk_state, chunk_decay_BCHK[..., None], state0)

  r_start = r * jnp.exp(exc)
  if from_prev is not None:
    r_start = jnp.where(from_prev[..., None, None], r_start, 0.0)
  o_inter = jnp.einsum("bcihk,bchkv->bcihv", r_start, starts_BCHKV)
  o = (o_intra + o_inter).reshape(B, T_pad, H, V)[:, :T]
  return o, final


def wkv6_step(state_BHKV, r_BHK, k_BHK, v_BHV, logw_BHK, u_HK):
  """One decoding step; returns (o_BHV, new_state_BHKV)."""
  f32 = jnp.float32
  r, k, v = r_BHK.astype(f32), k_BHK.astype(f32), v_BHV.astype(f32)
  state = state_BHKV.astype(f32)
  o = jnp.einsum("bhk,bhkv->bhv", r, state) + jnp.einsum("bhk,hk,bhk->bh", r, u_HK.astype(f32), k)[..., None] * v
  state = jnp.exp(logw_BHK.astype(f32))[..., None] * state + k[..., None] * v[:, :, None, :]
  return o, state


def wkv6_scan_reference(r_BTHK, k_BTHK, v_BTHV, logw_BTHK, u_HK, *, runs_BT=None, state0_BHKV=None):
  """Token-by-token scan of `wkv6_step` (the definition the chunked form must reproduce)."""
  B, T, H, Kd = r_BTHK.shape
  V = v_BTHV.shape[-1]
  state0 = jnp.zeros((B, H, Kd, V), jnp.float32) if state0_BHKV is None else state0_BHKV
  step = lambda state, r, k, v, lw: wkv6_step(state, r, k, v, lw, u_HK)
  return scan_with_resets(step, state0, (r_BTHK, k_BTHK, v_BTHV, logw_BTHK), runs_BT)


def rwkv_dims(cfg: ModelConfig) -> tuple[int, int]:
  """(heads H, head size K) of the time mix; the value size equals K."""
  H = cfg.rwkv_heads or cfg.n_heads
  if cfg.d_model % H:
    raise ValueError(
      f"RWKV time mix: d_model={cfg.d_model} is not divisible by rwkv_heads={H}; pick rwkv_heads dividing {cfg.d_model}"
    )
  return H, cfg.d_model // H


def lora_ranks(d_model: int) -> tuple[int, int]:
  """(token-shift rank, decay rank): RWKV-6 uses 32 / 64 at its sizes; small models get half, so the low-rank
  projections stay a small share of the mixer's parameters."""
  mix = 32 if d_model >= 512 else 16
  return mix, 2 * mix


def init_rwkv_cache(cfg: ModelConfig, batch_size: int, dtype=None) -> dict:
  H, Kd = rwkv_dims(cfg)
  return {
    "wkv_state": jnp.zeros((batch_size, H, Kd, Kd), jnp.float32),  # the recurrence always runs in float32
    "shift_state": jnp.zeros((batch_size, 1, cfg.d_model), jnp.dtype(dtype or cfg.dtype)),
  }


def _channel_ramp(d: int):
  return jnp.arange(d, dtype=jnp.float32) / max(d - 1, 1)


def _mix_init(power: float):
  # RWKV-6 starts token-shift mixes spread over channels (1 - ramp^power): some channels look mostly at x_t,
  # some mostly at x_{t-1}. Mid-depth ratios are used since a mixer does not know its layer index.
  return lambda key, shape, dtype=jnp.float32: (1.0 - _channel_ramp(shape[0]) ** power).astype(dtype)


def _decay_init(key, shape, dtype=jnp.float32):
  # wlog from -6 (w ~ 1: long memory) to -1 (w ~ 0.7: short memory) across channels, as in RWKV-6.
  ramp = _channel_ramp(shape[0] * shape[1]).reshape(shape)
  return (-6.0 + 5.0 * ramp**1.35).astype(dtype)


def _bonus_init(key, shape, dtype=jnp.float32):
  ramp = _channel_ramp(shape[0] * shape[1]).reshape(shape)
  zigzag = ((jnp.arange(shape[0] * shape[1]) + 1) % 3 - 1).reshape(shape) * 0.1
  return (0.5 * (1.0 - ramp) + zigzag).astype(dtype)


def _small_uniform(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, -0.01, 0.01)


class RWKVTimeMix(nn.Module):
  """RWKV-6 time mix: ddlerp token shift -> r, k, v, g, decay -> WKV -> per-head GroupNorm -> gate -> out-proj."""

  cfg: ModelConfig
  chunk_size: int = DEFAULT_CHUNK
  block_size: int = DEFAULT_BLOCK

  @nn.compact
  def __call__(self, x_BTD, *, positions_BT=None, segment_ids_BT=None, cache=None, decode_info=None):
    del decode_info  # attention's slot bookkeeping; a recurrence needs none
    cfg = self.cfg
    dt_ = compute_dtype(cfg)
    H, Kd = rwkv_dims(cfg)
    D = cfg.d_model
    B, T, _ = x_BTD.shape
    R_mix, R_decay = lora_ranks(D)
    x_BTD = x_BTD.astype(dt_)

    if cache is None:
      runs_BT = None if segment_ids_BT is None else segment_runs(segment_ids_BT)
      prev_B1D, valid_BT = jnp.zeros((B, 1, D), dt_), None
    else:
      runs_BT = None
      if T > 1:  # a single token needs no reordering
        order_BT, inverse_BT, n_valid_B = compaction(positions_BT)
        x_BTD = take_time(x_BTD, order_BT)
      else:
        n_valid_B = (positions_BT[:, 0] >= 0).astype(jnp.int32)
      valid_BT = jnp.arange(T)[None, :] < n_valid_B[:, None]
      prev_B1D = cache["shift_state"].astype(dt_)
    full_BSD = jnp.concatenate([prev_B1D, x_BTD], axis=1)
    shifted_BTD = full_BSD[:, :T]
    if runs_BT is not None:  # a document's first token has no predecessor
      first_BT = runs_BT != jnp.pad(runs_BT, ((0, 0), (1, 0)), constant_values=-1)[:, :T]
      shifted_BTD = jnp.where(first_BT[..., None], 0, shifted_BTD)
    xx_BTD = shifted_BTD - x_BTD

    vec = lambda name, init: param_with_axes(self, name, init, (D,), ("embed",)).astype(dt_)
    xxx_BTD = x_BTD + xx_BTD * vec("mix_x", _mix_init(0.5))
    w1 = param_with_axes(self, "mix_lora_a", nn.initializers.zeros, (D, len(MIX_BRANCHES) * R_mix), ("embed", "lora"))
    hid_BTFR = jnp.tanh(jnp.einsum("btd,dr->btr", xxx_BTD, w1.astype(dt_))).reshape(B, T, len(MIX_BRANCHES), R_mix)
    mixed = {}
    for i, (branch, power) in enumerate(zip(MIX_BRANCHES, (0.5, 0.5, 0.7, 0.25, 0.25))):
      w2 = param_with_axes(self, f"mix_lora_b_{branch}", _small_uniform, (R_mix, D), ("lora", "embed"))
      m_BTD = jnp.einsum("btr,rd->btd", hid_BTFR[:, :, i], w2.astype(dt_))
      mixed[branch] = x_BTD + xx_BTD * (vec(f"mix_{branch}", _mix_init(power)) + m_BTD)

    def head_proj(name, inp):
      w = param_with_axes(self, name, normal_init(cfg.init_std), (D, H, Kd), ("embed", "heads", "head_dim"))
      return jnp.einsum("btd,dhk->bthk", inp, w.astype(dt_))

    r_BTHK = head_proj("receptance_kernel", mixed["r"])
    k_BTHK = head_proj("key_kernel", mixed["k"])
    v_BTHK = head_proj("value_kernel", mixed["v"])
    g_BTHK = nn.silu(head_proj("gate_kernel", mixed["g"]))
    decay_HK = param_with_axes(self, "decay", _decay_init, (H, Kd), ("heads", "head_dim"))
    da = param_with_axes(self, "decay_lora_a", nn.initializers.zeros, (D, R_decay), ("embed", "lora"))
    db = param_with_axes(self, "decay_lora_b", _small_uniform, (R_decay, H, Kd), ("lora", "heads", "head_dim"))
    wlog_BTHK = decay_HK + jnp.einsum(
      "btr,rhk->bthk", jnp.tanh(jnp.einsum("btd,dr->btr", mixed["w"], da.astype(dt_))), db.astype(dt_)
    ).astype(jnp.float32)
    logw_BTHK = jnp.maximum(-jnp.exp(wlog_BTHK), MIN_LOG_DECAY)
    bonus_HK = param_with_axes(self, "bonus", _bonus_init, (H, Kd), ("heads", "head_dim"))
    if valid_BT is not None:  # padding: no decay and no input, so the state passes through unchanged
      logw_BTHK = jnp.where(valid_BT[..., None, None], logw_BTHK, 0.0)
      k_BTHK = jnp.where(valid_BT[..., None, None], k_BTHK, 0)

    state0 = None if cache is None else cache["wkv_state"]
    if cache is not None and T == 1:
      o_BHK, state = wkv6_step(state0, r_BTHK[:, 0], k_BTHK[:, 0], v_BTHK[:, 0], logw_BTHK[:, 0], bonus_HK)
      o_BTHK = o_BHK[:, None]
    else:
      o_BTHK, state = wkv6_chunked(
        r_BTHK,
        k_BTHK,
        v_BTHK,
        logw_BTHK,
        bonus_HK,
        runs_BT=runs_BT,
        state0_BHKV=state0,
        chunk_size=self.chunk_size,
        block_size=self.block_size,
      )

    mean = jnp.mean(o_BTHK, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(o_BTHK - mean), axis=-1, keepdims=True)
    gn_scale = param_with_axes(self, "group_norm_scale", nn.initializers.ones, (H, Kd), ("heads", "head_dim"))
    gn_bias = param_with_axes(self, "group_norm_bias", nn.initializers.zeros, (H, Kd), ("heads", "head_dim"))
    o_BTHK = (o_BTHK - mean) * jax.lax.rsqrt(var + GROUP_NORM_EPS) * gn_scale + gn_bias
    o_BTHK = o_BTHK.astype(dt_) * g_BTHK

    new_cache = None
    if cache is not None:
      if T > 1:
        o_BTHK = take_time(o_BTHK, inverse_BT)
      new_cache = {
        "wkv_state": state.astype(cache["wkv_state"].dtype),
        "shift_state": carried_window(full_BSD, n_valid_B, 1).astype(cache["shift_state"].dtype),
      }
    w_o = param_with_axes(self, "out_kernel", residual_init(cfg), (H, Kd, D), ("heads", "head_dim", "embed"))
    y_BTD = jnp.einsum("bthk,hkd->btd", o_BTHK, w_o.astype(dt_))
    return y_BTD, new_cache

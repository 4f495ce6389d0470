"""Selective state-space mixer in the Mamba-2 (state-space duality, SSD) style.

Per head h the state S [N, P] evolves as S_t = exp(a_t) S_{t-1} + B_t^T (dt_t x_t) and the output is
y_t = C_t S_t + D_h x_t, with an input-dependent step size dt_t (so a_t = dt_t * A_h <= 0 is a scalar log
decay per head and token), input-dependent B_t, C_t [N] shared by all heads, a short causal depthwise
conv in front (as in Mamba) and a SiLU gate plus per-head RMSNorm behind.

Training uses the chunked SSD form: inside a chunk of `chunk_size` tokens the output is a masked
[L, L] matmul; chunks hand their [H, N, P] state to the next one through `lax.scan`, so nothing larger
than one chunk's [L, L] scores is ever built. Decoding carries an O(1) state: the SSM state and the last
K-1 conv inputs. Both forms share every parameter and give the same numbers (tests check it).

The module also holds the sequence plumbing both recurrent mixers use (segment resets, padding
compaction, the causal conv, carried windows).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from modernlm_jax.model.config import ModelConfig
from modernlm_jax.model.layers import compute_dtype, normal_init, param_with_axes, residual_init

SSM_EXPAND = 2  # inner width = 2 * d_model, as in Mamba-2
CONV_WIDTH = 4  # Mamba's short causal conv
DEFAULT_CHUNK = 64
# A per-token log decay below this is clamped: exp(-20) ~ 2e-9 already forgets everything, and the clamp keeps
# cumulative sums inside a chunk small enough that their float32 differences stay accurate.
MIN_LOG_DECAY = -20.0


# ----------------------------------------------------------------------------------------------------------------
# Sequence plumbing shared by the recurrent mixers.


def segment_runs(segment_ids_BT: jax.Array) -> jax.Array:
  """Index of the document run each token belongs to: +1 wherever the segment id changes.

  Two tokens may exchange information only if their run ids are equal (documents are contiguous, so equal run
  ids also means no document boundary lies between them).
  """
  change_BT = jnp.concatenate(
    [jnp.zeros_like(segment_ids_BT[:, :1], bool), segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1
  )
  return jnp.cumsum(change_BT.astype(jnp.int32), axis=1)


def compaction(positions_BT: jax.Array):
  """A per-row permutation that moves valid tokens (position >= 0) to the front, keeping their order.

  Decoding rows may be padded anywhere (left-padded prompts, right-padded chunks); a recurrence must skip the
  padding, so the mixers run on the compacted row and scatter the outputs back with `inverse_BT`.
  """
  valid_BT = positions_BT >= 0
  order_BT = jnp.argsort(jnp.logical_not(valid_BT).astype(jnp.int32), axis=1, stable=True)
  inverse_BT = jnp.argsort(order_BT, axis=1)
  n_valid_B = jnp.sum(valid_BT, axis=1).astype(jnp.int32)
  return order_BT, inverse_BT, n_valid_B


def take_time(x_BT_, idx_BT):
  """x[b, idx[b, t], ...] along the time axis."""
  idx = idx_BT.reshape(idx_BT.shape + (1,) * (x_BT_.ndim - 2))
  return jnp.take_along_axis(x_BT_, idx, axis=1)


def carried_window(full_BSC: jax.Array, n_valid_B: jax.Array, width: int) -> jax.Array:
  """The `width` entries that end at the last valid token of `concat([carried (width), new tokens])`."""
  idx_BW = n_valid_B[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
  return take_time(full_BSC, idx_BW)


def causal_depthwise_conv(u_BTC, w_KC, b_C, prev_BKC, runs_BT=None):
  """y_t = b + sum_k w[k] * u_{t-(K-1)+k}, where `prev_BKC` (K-1 entries) precedes u and, with `runs_BT`,
  taps that reach into another document read zero (the state resets at a document start)."""
  K, T = w_KC.shape[0], u_BTC.shape[1]
  full_BSC = jnp.concatenate([prev_BKC.astype(u_BTC.dtype), u_BTC], axis=1)
  y_BTC = jnp.broadcast_to(b_C.astype(u_BTC.dtype), u_BTC.shape)
  for k in range(K):
    lag = K - 1 - k
    tap_BTC = full_BSC[:, k : k + T]
    if runs_BT is not None and lag:
      same_BT = runs_BT == jnp.pad(runs_BT, ((0, 0), (lag, 0)), constant_values=-1)[:, :T]
      tap_BTC = jnp.where(same_BT[:, :, None], tap_BTC, 0)
    y_BTC = y_BTC + tap_BTC * w_KC[k].astype(u_BTC.dtype)
  return y_BTC, full_BSC


def pad_time(x, T_pad: int, mode: str = "constant"):
  if x is None or T_pad == x.shape[1]:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, T_pad - x.shape[1])
  return jnp.pad(x, widths, mode=mode)


def chunk_layout(T: int, chunk_size: int, multiple: int = 1) -> tuple[int, int]:
  """(chunk length, padded length): inputs shorter than a chunk use one chunk of their own length (rounded up
  to `multiple`)."""
  L = min(chunk_size, -(-T // multiple) * multiple)
  return L, -(-T // L) * L


def chunk_run_masks(runs_BT, B: int, nc: int, L: int):
  """Masks that stop information at document starts, in chunked layout.

  Returns (same_BCLL: token pair in one document, from_prev_BCL: token continues the document that was open
  before its chunk, to_end_BCL: token's document is still open at the chunk end, carry_BC: the chunk start's
  document is still open at the chunk end). All True when `runs_BT` is None.
  """
  if runs_BT is None:
    return None, None, None, None
  r_BCL = runs_BT.reshape(B, nc, L)
  before_BC = jnp.concatenate([r_BCL[:, :1, 0], r_BCL[:, :-1, -1]], axis=1)
  same_BCLL = r_BCL[:, :, :, None] == r_BCL[:, :, None, :]
  from_prev_BCL = r_BCL == before_BC[:, :, None]
  to_end_BCL = r_BCL == r_BCL[:, :, -1:]
  carry_BC = r_BCL[:, :, -1] == before_BC
  return same_BCLL, from_prev_BCL, to_end_BCL, carry_BC


def scan_chunk_states(chunk_state_BC_, chunk_decay_BC_, state0_B_):
  """Start state of every chunk (and the final state): S_next = decay * S + chunk_state, one step per chunk."""

  def step(state, inputs):
    chunk_state, decay = inputs
    return decay * state + chunk_state, state

  xs = (jnp.moveaxis(chunk_state_BC_, 1, 0), jnp.moveaxis(chunk_decay_BC_, 1, 0))
  final, starts = jax.lax.scan(step, state0_B_, xs)
  return jnp.moveaxis(starts, 0, 1), final


# ----------------------------------------------------------------------------------------------------------------
# The SSD recurrence: chunked (training / prefill), single step (decoding) and a plain scan (reference).


def ssd_chunked(x_BTHP, a_BTH, b_BTN, c_BTN, *, runs_BT=None, state0_BHNP=None, chunk_size: int = DEFAULT_CHUNK):
  """Chunked SSD. x is already scaled by dt; a = dt * A is the per-step log decay (<= 0). Float32 throughout.

  Returns (y_BTHP, final_state_BHNP).
  """
  B, T, H, P = x_BTHP.shape
  N = b_BTN.shape[-1]
  L, T_pad = chunk_layout(T, chunk_size)
  nc = T_pad // L
  f32 = jnp.float32
  # Padding (a = 0, x = 0) leaves the state untouched, so the final state is exact.
  x = pad_time(x_BTHP.astype(f32), T_pad).reshape(B, nc, L, H, P)
  a = pad_time(a_BTH.astype(f32), T_pad).reshape(B, nc, L, H)
  bm = pad_time(b_BTN.astype(f32), T_pad).reshape(B, nc, L, N)
  cm = pad_time(c_BTN.astype(f32), T_pad).reshape(B, nc, L, N)
  runs = pad_time(runs_BT, T_pad, mode="edge")
  same, from_prev, to_end, carry = chunk_run_masks(runs, B, nc, L)

  cs_BCLH = jnp.cumsum(a, axis=2)
  causal_LL = jnp.tril(jnp.ones((L, L), bool))
  pair_BCLL = causal_LL[None, None] if same is None else causal_LL[None, None] & same
  # Mask the exponent, not the exponential: exp of a masked (j > i) difference could overflow and poison grads.
  diff_BCLLH = cs_BCLH[:, :, :, None, :] - cs_BCLH[:, :, None, :, :]
  decay_BCLLH = jnp.exp(jnp.where(pair_BCLL[..., None], diff_BCLLH, -jnp.inf))
  scores_BCLL = jnp.einsum("bcin,bcjn->bcij", cm, bm)
  y_intra = jnp.einsum("bcij,bcijh,bcjhp->bcihp", scores_BCLL, decay_BCLLH, x)

  to_end_BCLH = jnp.exp(cs_BCLH[:, :, -1:, :] - cs_BCLH)
  if to_end is not None:
    to_end_BCLH = jnp.where(to_end[..., None], to_end_BCLH, 0.0)
  chunk_state = jnp.einsum("bcjh,bcjn,bcjhp->bchnp", to_end_BCLH, bm, x)
  chunk_decay_BCH = jnp.exp(cs_BCLH[:, :, -1, :])
  if carry is not None:
    chunk_decay_BCH = jnp.where(carry[..., None], chunk_decay_BCH, 0.0)
  state0 = jnp.zeros((B, H, N, P), f32) if state0_BHNP is None else state0_BHNP.astype(f32)
  starts_BCHNP, final = scan_chunk_states(chunk_state, chunk_decay_BCH[..., None, None], state0)

  from_start_BCLH = jnp.exp(cs_BCLH)
  if from_prev is not None:
    from_start_BCLH = jnp.where(from_prev[..., None], from_start_BCLH, 0.0)
  y_inter = jnp.einsum("bcin,bchnp,bcih->bcihp", cm, starts_BCHNP, from_start_BCLH)
  y = (y_intra + y_inter).reshape(B, T_pad, H, P)[:, :T]
  return y, final


def ssd_step(state_BHNP, x_BHP, a_BH, b_BN, c_BN):
  """One decoding step of the recurrence; returns (y_BHP, new_state_BHNP)."""
  f32 = jnp.float32
  state = jnp.exp(a_BH.astype(f32))[:, :, None, None] * state_BHNP.astype(f32) + jnp.einsum(
    "bn,bhp->bhnp", b_BN.astype(f32), x_BHP.astype(f32)
  )
  return jnp.einsum("bn,bhnp->bhp", c_BN.astype(f32), state), state


def scan_with_resets(step_fn, state0, inputs_BT: tuple, runs_BT=None):
  """Token-by-token `step_fn(state, *inputs_t) -> (out_t, state)` over time, the state zeroed where a new
  document starts (`runs_BT` changes). Returns (outputs [B, T, ...], final state)."""
  B, T = inputs_BT[0].shape[:2]
  runs = jnp.zeros((B, T), jnp.int32) if runs_BT is None else runs_BT
  reset_BT = runs != jnp.pad(runs, ((0, 0), (1, 0)))[:, :T]

  def step(state, inp):
    *xs, reset = inp
    state = jnp.where(reset.reshape(reset.shape + (1,) * (state.ndim - 1)), 0.0, state)
    out, state = step_fn(state, *xs)
    return state, out

  final, outs = jax.lax.scan(step, state0, tuple(jnp.moveaxis(t, 1, 0) for t in (*inputs_BT, reset_BT)))
  return jnp.moveaxis(outs, 0, 1), final


def ssd_scan_reference(x_BTHP, a_BTH, b_BTN, c_BTN, *, runs_BT=None, state0_BHNP=None):
  """Token-by-token scan of `ssd_step` (the definition the chunked form must reproduce)."""
  B, T, H, P = x_BTHP.shape
  N = b_BTN.shape[-1]
  state0 = jnp.zeros((B, H, N, P), jnp.float32) if state0_BHNP is None else state0_BHNP
  return scan_with_resets(ssd_step, state0, (x_BTHP, a_BTH, b_BTN, c_BTN), runs_BT)


# ----------------------------------------------------------------------------------------------------------------
# The mixer module.


def ssm_dims(cfg: ModelConfig) -> tuple[int, int, int]:
  """(heads H, head width P, state size N) of the selective SSM."""
  H = cfg.ssm_heads or cfg.n_heads
  inner = SSM_EXPAND * cfg.d_model
  if inner % H:
    raise ValueError(
      f"selective SSM: inner width {inner} (= {SSM_EXPAND} * d_model) is not divisible by "
      f"ssm_heads={H}; pick ssm_heads dividing {inner}"
    )
  if cfg.ssm_state <= 0:
    raise ValueError(f"model.ssm_state must be positive, got {cfg.ssm_state}")
  return H, inner // H, cfg.ssm_state


def init_ssm_cache(cfg: ModelConfig, batch_size: int, dtype=None) -> dict:
  H, P, N = ssm_dims(cfg)
  conv_dtype = jnp.dtype(dtype or cfg.dtype)
  return {
    "ssm_state": jnp.zeros((batch_size, H, N, P), jnp.float32),  # the recurrence always runs in float32
    "conv_state": jnp.zeros((batch_size, CONV_WIDTH - 1, H * P + 2 * N), conv_dtype),
  }


def _dt_bias_init(key, shape, dtype=jnp.float32):
  # Mamba's init: softplus(dt_bias) log-uniform in [1e-3, 1e-1], so early steps neither freeze nor forget at once.
  dt = jnp.exp(jax.random.uniform(key, shape, dtype, math.log(1e-3), math.log(1e-1)))
  return dt + jnp.log(-jnp.expm1(-dt))


def _a_log_init(key, shape, dtype=jnp.float32):
  return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, 16.0))


def _conv_init(key, shape, dtype=jnp.float32):
  bound = 1.0 / math.sqrt(shape[0])  # PyTorch Conv1d default for a depthwise kernel of width K
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class SelectiveSSM(nn.Module):
  """Mamba-2-style mixer: in-proj -> causal conv -> SiLU -> SSD -> gate -> per-head RMSNorm -> out-proj."""

  cfg: ModelConfig
  chunk_size: int = DEFAULT_CHUNK

  @nn.compact
  def __call__(self, x_BTD, *, positions_BT=None, segment_ids_BT=None, cache=None, decode_info=None):
    del decode_info  # attention's slot bookkeeping; a recurrence needs none
    cfg = self.cfg
    dt_ = compute_dtype(cfg)
    H, P, N = ssm_dims(cfg)
    D, K = cfg.d_model, CONV_WIDTH
    B, T, _ = x_BTD.shape
    x_BTD = x_BTD.astype(dt_)

    def proj(name, shape, axes):
      w = param_with_axes(self, name, normal_init(cfg.init_std), (D, *shape), ("embed", *axes))
      return jnp.einsum("btd,d...->bt...", x_BTD, w.astype(dt_))

    z_BTHP = proj("z_kernel", (H, P), ("heads", "head_dim"))
    u_BTC = jnp.concatenate(
      [
        proj("x_kernel", (H, P), ("heads", "head_dim")).reshape(B, T, H * P),
        proj("b_kernel", (N,), ("state",)),
        proj("c_kernel", (N,), ("state",)),
      ],
      axis=-1,
    )
    dt_raw_BTH = proj("dt_kernel", (H,), ("heads",))
    conv_w_KC = jnp.concatenate(
      [
        param_with_axes(self, "conv_x_kernel", _conv_init, (K, H, P), ("conv", "heads", "head_dim")).reshape(K, H * P),
        param_with_axes(self, "conv_b_kernel", _conv_init, (K, N), ("conv", "state")),
        param_with_axes(self, "conv_c_kernel", _conv_init, (K, N), ("conv", "state")),
      ],
      axis=1,
    )
    conv_b_C = jnp.concatenate(
      [
        param_with_axes(self, "conv_x_bias", nn.initializers.zeros, (H, P), ("heads", "head_dim")).reshape(H * P),
        param_with_axes(self, "conv_b_bias", nn.initializers.zeros, (N,), ("state",)),
        param_with_axes(self, "conv_c_bias", nn.initializers.zeros, (N,), ("state",)),
      ]
    )
    dt_bias_H = param_with_axes(self, "dt_bias", _dt_bias_init, (H,), ("heads",))
    a_log_H = param_with_axes(self, "a_log", _a_log_init, (H,), ("heads",))
    d_skip_H = param_with_axes(self, "d_skip", nn.initializers.ones, (H,), ("heads",))

    if cache is None:
      runs_BT = None if segment_ids_BT is None else segment_runs(segment_ids_BT)
      valid_BT, prev_BKC, state0 = None, jnp.zeros((B, K - 1, u_BTC.shape[-1]), dt_), None
    else:
      runs_BT = None
      if T > 1:  # a single token needs no reordering
        order_BT, inverse_BT, n_valid_B = compaction(positions_BT)
        u_BTC, z_BTHP, dt_raw_BTH = (take_time(t, order_BT) for t in (u_BTC, z_BTHP, dt_raw_BTH))
      else:
        n_valid_B = (positions_BT[:, 0] >= 0).astype(jnp.int32)
      valid_BT = jnp.arange(T)[None, :] < n_valid_B[:, None]
      prev_BKC, state0 = cache["conv_state"], cache["ssm_state"]

    conv_BTC, full_BSC = causal_depthwise_conv(u_BTC, conv_w_KC, conv_b_C, prev_BKC, runs_BT)
    conv_BTC = nn.silu(conv_BTC)
    xs_BTHP = conv_BTC[..., : H * P].reshape(B, T, H, P).astype(jnp.float32)
    b_BTN = conv_BTC[..., H * P : H * P + N]
    c_BTN = conv_BTC[..., H * P + N :]
    dt_BTH = jax.nn.softplus(dt_raw_BTH.astype(jnp.float32) + dt_bias_H)
    a_BTH = jnp.maximum(dt_BTH * -jnp.exp(a_log_H), MIN_LOG_DECAY)
    xdt_BTHP = xs_BTHP * dt_BTH[..., None]
    if valid_BT is not None:  # padding: no decay and no input, so the state passes through unchanged
      a_BTH = jnp.where(valid_BT[..., None], a_BTH, 0.0)
      xdt_BTHP = jnp.where(valid_BT[..., None, None], xdt_BTHP, 0.0)

    if cache is not None and T == 1:
      y_BHP, state = ssd_step(state0, xdt_BTHP[:, 0], a_BTH[:, 0], b_BTN[:, 0], c_BTN[:, 0])
      y_BTHP = y_BHP[:, None]
    else:
      y_BTHP, state = ssd_chunked(
        xdt_BTHP, a_BTH, b_BTN, c_BTN, runs_BT=runs_BT, state0_BHNP=state0, chunk_size=self.chunk_size
      )
    y_BTHP = y_BTHP + d_skip_H[:, None] * xs_BTHP
    y_BTHP = y_BTHP * nn.silu(z_BTHP.astype(jnp.float32))
    norm_HP = param_with_axes(self, "norm_scale", nn.initializers.ones, (H, P), ("heads", "head_dim"))
    y_BTHP = y_BTHP * jax.lax.rsqrt(jnp.mean(y_BTHP * y_BTHP, axis=-1, keepdims=True) + cfg.norm_eps) * norm_HP

    new_cache = None
    if cache is not None:
      if T > 1:
        y_BTHP = take_time(y_BTHP, inverse_BT)
      new_cache = {
        "ssm_state": state.astype(cache["ssm_state"].dtype),
        "conv_state": carried_window(full_BSC, n_valid_B, K - 1).astype(cache["conv_state"].dtype),
      }
    w_o = param_with_axes(self, "out_kernel", residual_init(cfg), (H, P, D), ("heads", "head_dim", "embed"))
    y_BTD = jnp.einsum("bthp,hpd->btd", y_BTHP.astype(dt_), w_o.astype(dt_))
    return y_BTD, new_cache

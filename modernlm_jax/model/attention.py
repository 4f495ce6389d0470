"""Causal self-attention with every option the families need, and a KV-cache decode path.

Options: RoPE / ALiBi / both / none for relative position, an output gate (sigmoid(x W_g) ⊙ attention
output, per head or per element, "Gated Attention for LLMs"), attention sinks (a learnable per-head
logit that competes in the softmax and absorbs probability mass), QK-norm, biases on/off, and one fused
QKV matrix (`fused_qkv`, a different parameter tree: off by default).

Kernels: `reference` (einsum, always available, what tests compare against), `xla`
(`jax.nn.dot_product_attention(implementation="xla")`), `cudnn` (flash attention on NVIDIA GPUs: plain
causal, bf16/fp16), `flash` (our Pallas flash attention, `kernels/flash.py`: segment ids, ALiBi and sinks
on GPU; the Pallas interpreter elsewhere, for tests) and `splash` (Pallas block-sparse flash attention on
TPU, `tpu_attention.py`: segment ids and sinks). `auto` picks the fastest kernel that supports the
options and logs why it fell back when it must.

Projections are flat 2-D matmuls over [B·T, D] (weights reshaped, a free view): XLA:CPU lowers the
head-split einsum `btd,dhk->bthk` and the `[H, Dh, D]` out-projection with transposed copies feeding
every weight-gradient matmul, the flat form with none.
"""

from __future__ import annotations

import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from modernlm_jax.model import positions as pos_lib
from modernlm_jax.model import tpu_attention
from modernlm_jax.model.config import ModelConfig
from modernlm_jax.model.kernels import flash
from modernlm_jax.model.layers import RMSNorm, compute_dtype, normal_init, param_with_axes, residual_init

_NEG_INF = -1e30  # finite, so rows with every key masked (padding) give zeros-weighted output instead of NaN
_logged_choices: set[tuple[str, str]] = set()


# Head sizes our Triton flash kernel tiles (tl.dot needs ≥ 16 and power-of-two block shapes).
FLASH_GPU_HEAD_DIMS = (16, 32, 64, 128, 256)


def _fallback(cfg: ModelConfig) -> str:
  """The kernel when no flash kernel applies: XLA's, or the reference when sinks need it (XLA has none)."""
  return "reference" if cfg.attn_sinks else "xla"


def flash_blockers(cfg: ModelConfig, *, backend: str, decoding: bool) -> list[str]:
  """Why our Pallas flash kernel cannot run these options (empty: it can)."""
  blockers = []
  if decoding:
    blockers.append("KV-cache decoding")
  if backend == "gpu" and cfg.head_dim not in FLASH_GPU_HEAD_DIMS:
    blockers.append(f"head_dim {cfg.head_dim} (the Triton kernel tiles {list(FLASH_GPU_HEAD_DIMS)})")
  return blockers


def select_attention_impl(
  cfg: ModelConfig, *, backend: str, has_segments: bool, decoding: bool, seq_len: int | None = None
) -> tuple[str, str]:
  """Returns (kernel, reason). Pure function of the options, so it is unit-testable on CPU.

  `seq_len` (the query length) matters only for splash, whose tiles need a multiple of 128.
  GPU, auto: cuDNN for plain causal bf16/fp16 attention; our flash kernel for what cuDNN lacks (packed
  documents, ALiBi, sinks, float32); XLA (or the reference, for sinks) when neither applies, e.g. decoding.
  """
  wanted = cfg.attention_impl
  if wanted == "reference":
    return "reference", "requested"
  if wanted == "flash":
    blockers = flash_blockers(cfg, backend=backend, decoding=decoding)
    if blockers:
      return _fallback(cfg), "flash unavailable for " + "; ".join(blockers)
    if backend == "gpu":
      return "flash", "requested"
    return "flash", f"requested (Pallas interpreter on {backend}: slow, for tests)"
  if wanted in ("splash", "auto") and backend == "tpu":
    splash_blockers = []
    if "alibi" in cfg.positions:
      splash_blockers.append("ALiBi bias")
    if decoding:
      splash_blockers.append("KV-cache decoding")
    if not tpu_attention.splash_seq_ok(seq_len):
      splash_blockers.append(f"sequence length {seq_len} not a multiple of {tpu_attention.SPLASH_BLOCK}")
    if not splash_blockers:
      ok, why = tpu_attention.splash_available()
      if not ok:
        splash_blockers.append(why)
    if not splash_blockers:
      return "splash", "requested" if wanted == "splash" else "auto: TPU with supported options"
    return _fallback(cfg), "splash unavailable for " + "; ".join(splash_blockers)
  if wanted == "splash":
    return _fallback(cfg), f"splash needs a TPU (backend is {backend})"
  cudnn_blockers = []
  if backend != "gpu":
    cudnn_blockers.append(f"backend is {backend}")
  if cfg.dtype not in ("bfloat16", "float16"):
    cudnn_blockers.append(f"dtype {cfg.dtype} (cuDNN flash attention needs bf16/fp16)")
  if "alibi" in cfg.positions:
    cudnn_blockers.append("ALiBi bias")
  if has_segments:
    cudnn_blockers.append("packed-document segment masking")
  if cfg.attn_sinks:
    cudnn_blockers.append("attention sinks")
  if decoding:
    cudnn_blockers.append("KV-cache decoding")
  if wanted in ("cudnn", "auto") and not cudnn_blockers:
    return "cudnn", "requested" if wanted == "cudnn" else "auto: GPU with supported options"
  if wanted == "cudnn":
    return _fallback(cfg), "cuDNN unavailable for " + "; ".join(cudnn_blockers)
  if wanted == "auto" and backend == "gpu" and not flash_blockers(cfg, backend=backend, decoding=decoding):
    return "flash", "auto: GPU, cuDNN unavailable for " + "; ".join(cudnn_blockers)
  if cfg.attn_sinks:
    return "reference", "attention sinks need the reference kernel here (XLA attention has no sink logit)"
  return "xla", "requested" if wanted == "xla" else "auto"


def _log_choice(impl: str, reason: str) -> None:
  if (impl, reason) not in _logged_choices:
    _logged_choices.add((impl, reason))
    logging.info("attention kernel: %s (%s)", impl, reason)


def reference_attention(q_BTHD, k_BSHD, v_BSHD, mask_BTS, bias_BHTS=None, sink_H=None):
  """softmax(q k^T / sqrt(d) + bias, masked) v, in float32, with optional per-head sink logits."""
  scale = 1.0 / math.sqrt(q_BTHD.shape[-1])
  s_BHTS = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD, preferred_element_type=jnp.float32) * scale
  if bias_BHTS is not None:
    s_BHTS = s_BHTS + bias_BHTS
  s_BHTS = jnp.where(mask_BTS[:, None, :, :], s_BHTS, _NEG_INF)
  m_BHT1 = jnp.max(s_BHTS, axis=-1, keepdims=True)
  if sink_H is not None:
    # The sink is an extra key with a learned logit and a zero value: it only takes probability mass.
    sink_1H11 = sink_H.astype(jnp.float32)[None, :, None, None]
    m_BHT1 = jnp.maximum(m_BHT1, sink_1H11)
  p_BHTS = jnp.exp(s_BHTS - m_BHT1)
  denom_BHT1 = jnp.sum(p_BHTS, axis=-1, keepdims=True)
  if sink_H is not None:
    denom_BHT1 = denom_BHT1 + jnp.exp(sink_1H11 - m_BHT1)
  p_BHTS = p_BHTS / denom_BHT1
  return jnp.einsum("bhts,bshd->bthd", p_BHTS.astype(v_BSHD.dtype), v_BSHD)


def _flat_matmul(x_BTD, w_DF):
  """[B, T, D] @ [D, F] as one 2-D GEMM over B·T rows (no transposed copies on XLA:CPU)."""
  B, T, D = x_BTD.shape
  return (x_BTD.reshape(B * T, D) @ w_DF).reshape(B, T, w_DF.shape[-1])


class CausalSelfAttention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, *, positions_BT, segment_ids_BT=None, cache=None, decode_info=None):
    cfg = self.cfg
    dt = compute_dtype(cfg)
    H, Dh, D = cfg.n_heads, cfg.head_dim, cfg.d_model
    B, T = x_BTD.shape[:2]
    x_BTD = x_BTD.astype(dt)

    def project_in(name):
      w = param_with_axes(self, f"{name}_kernel", normal_init(cfg.init_std), (D, H, Dh), ("embed", "heads", "head_dim"))
      y = _flat_matmul(x_BTD, w.astype(dt).reshape(D, H * Dh)).reshape(B, T, H, Dh)
      if cfg.use_bias:
        y = y + param_with_axes(self, f"{name}_bias", nn.initializers.zeros, (H, Dh), ("heads", "head_dim")).astype(dt)
      return y

    if cfg.fused_qkv:  # one [D, 3·H·Dh] GEMM instead of three (fewer, larger kernels)
      w = param_with_axes(
        self, "qkv_kernel", normal_init(cfg.init_std), (D, 3, H, Dh), ("embed", "qkv", "heads", "head_dim")
      )
      qkv = _flat_matmul(x_BTD, w.astype(dt).reshape(D, 3 * H * Dh)).reshape(B, T, 3, H, Dh)
      if cfg.use_bias:
        qkv = qkv + param_with_axes(
          self, "qkv_bias", nn.initializers.zeros, (3, H, Dh), ("qkv", "heads", "head_dim")
        ).astype(dt)
      q_BTHD, k_BTHD, v_BTHD = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      q_BTHD, k_BTHD, v_BTHD = project_in("query"), project_in("key"), project_in("value")
    if cfg.qk_norm:
      q_BTHD = RMSNorm(eps=cfg.norm_eps, dtype=dt, name="q_norm")(q_BTHD)
      k_BTHD = RMSNorm(eps=cfg.norm_eps, dtype=dt, name="k_norm")(k_BTHD)
    sink_H = None
    if cfg.attn_sinks:
      sink_H = param_with_axes(self, "sink_logit", nn.initializers.zeros, (H,), ("heads",))

    impl, reason = select_attention_impl(
      cfg, backend=jax.default_backend(), has_segments=segment_ids_BT is not None, decoding=cache is not None, seq_len=T
    )
    _log_choice(impl, reason)

    new_cache = None
    if cache is None:
      q_pos, k_pos = positions_BT, positions_BT
      k_BSHD, v_BSHD = k_BTHD, v_BTHD
      mask_BTS = None
      if impl in ("reference", "xla"):  # the flash kernels mask inside; never build [T, T] for them
        mask_BTS = jnp.tril(jnp.ones((T, T), bool))[None]
        if segment_ids_BT is not None:
          mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
    else:
      # Keys are cached before RoPE so streaming (sink) decoding can re-position them inside the window.
      slots_BT = decode_info["slots_BT"]
      b_idx = jnp.arange(B)[:, None]
      k_cache = cache["k"].at[b_idx, slots_BT].set(k_BTHD.astype(cache["k"].dtype), mode="drop")
      v_cache = cache["v"].at[b_idx, slots_BT].set(v_BTHD.astype(cache["v"].dtype), mode="drop")
      new_cache = {"k": k_cache, "v": v_cache}
      k_BSHD, v_BSHD = k_cache.astype(dt), v_cache.astype(dt)
      q_pos, k_pos = decode_info["eff_q_BT"], decode_info["eff_k_BS"]
      kv_abs_BS = decode_info["kv_pos_BS"]
      mask_BTS = (kv_abs_BS[:, None, :] >= 0) & (kv_abs_BS[:, None, :] <= positions_BT[:, :, None])

    if "rope" in cfg.positions:
      q_BTHD = pos_lib.apply_rope(q_BTHD, q_pos, cfg.rope_theta)
      k_BSHD = pos_lib.apply_rope(k_BSHD, k_pos, cfg.rope_theta)
    has_alibi = "alibi" in cfg.positions
    if impl == "flash":
      out_BTHD = flash.flash_attention(
        q_BTHD,
        k_BSHD,
        v_BSHD,
        segment_ids_BT=segment_ids_BT,
        positions_BT=q_pos,
        alibi_slopes_H=pos_lib.alibi_slopes(H) if has_alibi else None,
        sink_H=sink_H,
        interpret=jax.default_backend() != "gpu",
      )
    elif impl == "splash":
      out_BTHD = tpu_attention.splash_attention(q_BTHD, k_BSHD, v_BSHD, segment_ids_BT, sink_H=sink_H)
    else:
      bias_BHTS = pos_lib.alibi_bias(q_pos, k_pos, H) if has_alibi else None
      if impl == "reference":
        out_BTHD = reference_attention(q_BTHD, k_BSHD, v_BSHD, mask_BTS, bias_BHTS, sink_H)
      else:
        causal_only = cache is None and segment_ids_BT is None
        out_BTHD = jax.nn.dot_product_attention(
          q_BTHD,
          k_BSHD,
          v_BSHD,
          bias=None if bias_BHTS is None else bias_BHTS.astype(dt),
          mask=None if causal_only else mask_BTS[:, None, :, :],
          is_causal=causal_only,
          implementation=impl,
        )

    if cfg.attn_gate != "none":
      gate_shape, gate_axes = (
        ((D, H, Dh), ("embed", "heads", "head_dim")) if cfg.attn_gate == "elementwise" else ((D, H), ("embed", "heads"))
      )
      w_g = param_with_axes(self, "gate_kernel", normal_init(cfg.init_std), gate_shape, gate_axes)
      g = _flat_matmul(x_BTD, w_g.astype(dt).reshape(D, -1)).reshape(B, T, *gate_shape[1:])
      if cfg.use_bias:
        g = g + param_with_axes(self, "gate_bias", nn.initializers.zeros, gate_shape[1:], gate_axes[1:]).astype(dt)
      g = jax.nn.sigmoid(g)
      out_BTHD = out_BTHD * (g if cfg.attn_gate == "elementwise" else g[..., None])

    w_o = param_with_axes(self, "out_kernel", residual_init(cfg), (H, Dh, D), ("heads", "head_dim", "embed"))
    y_BTD = _flat_matmul(out_BTHD.astype(dt).reshape(B, T, H * Dh), w_o.astype(dt).reshape(H * Dh, D))
    if cfg.use_bias:
      y_BTD = y_BTD + param_with_axes(self, "out_bias", nn.initializers.zeros, (D,), ("embed",)).astype(dt)
    return y_BTD, new_cache


def init_attention_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None) -> dict:
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch_size, max_len, cfg.n_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

"""Model FLOPs per token and device peaks, for MFU.

FLOPs per trained token = 6·N + 12·L·T·d_attn, the PaLM/nanoGPT convention: 6·N for the forward and
backward matmuls over the N non-embedding-lookup parameters (the output projection counts; the input
embedding lookup does not), plus the attention score and value matmuls, 2·2·T·d per attention layer
forward, ×3 for forward + backward. Recurrent layers add no T-dependent term.
"""

from __future__ import annotations

import jax

from modernlm_jax.model import ModelConfig

# bf16 dense peaks, FLOP/s per device.
PEAK_FLOPS = {
  "h100": 989e12,
  "h200": 989e12,
  "gh200": 989e12,
  "a100": 312e12,
  "tpu v4": 275e12,
  "tpu v3": 123e12,
  "tpu v5 lite": 197e12,
  "tpu v5e": 197e12,
  "tpu v5p": 459e12,
}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  from modernlm_jax.model.scales import count_params

  counts = count_params(cfg)
  n = counts["total"] - counts["embedding"] + cfg.d_model * cfg.vocab_size  # the LM head matmul always runs
  attn_layers = sum(1 for k in cfg.mixers if k == "attn")
  return 6.0 * n + 12.0 * attn_layers * seq_len * cfg.d_model


def device_peak_flops(device=None) -> float | None:
  """Peak bf16 FLOP/s of one device, or None when unknown (CPU)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "").lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS[key]
  return None

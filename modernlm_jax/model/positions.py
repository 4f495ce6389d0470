"""Position information: rotary embeddings (RoPE) and ALiBi.

RoPE angles are computed in float32 and cast once to the compute dtype: computing them in a
16-bit dtype loses precision at large positions, which measurably hurts training.
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def rope_sin_cos(positions, head_dim: int, theta: float = 10000.0):
  """sin/cos tables [..., head_dim/2] for integer positions, in float32."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x_BTHD, positions_BT, theta: float = 10000.0):
  """Rotates pairs (x[..., :D/2], x[..., D/2:]) by position-dependent angles (the GPT-NeoX/LLaMA layout)."""
  head_dim = x_BTHD.shape[-1]
  sin, cos = rope_sin_cos(positions_BT, head_dim, theta)
  sin = sin[:, :, None, :].astype(x_BTHD.dtype)  # cast once, after the float32 computation
  cos = cos[:, :, None, :].astype(x_BTHD.dtype)
  x1, x2 = jnp.split(x_BTHD, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def alibi_slopes(n_heads: int):
  """ALiBi head slopes: a geometric sequence 2^(-8/n), 2^(-16/n), ... (Press et al., 2022).

  For a head count that is not a power of two, the closest power of two's slopes are extended with
  every other slope of the next power of two, as in the paper's reference implementation.
  """

  def power_of_2_slopes(n):
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start * start**i for i in range(n)]

  if math.log2(n_heads).is_integer():
    slopes = power_of_2_slopes(n_heads)
  else:
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_2_slopes(closest) + power_of_2_slopes(2 * closest)[0::2][: n_heads - closest]
  return jnp.asarray(slopes, dtype=jnp.float32)


def alibi_bias(q_pos_BT, k_pos_BS, n_heads: int):
  """Additive bias [B, H, T, S] = -slope_h * (q_pos - k_pos): linear penalty on distance to the past."""
  distance = (q_pos_BT[:, :, None] - k_pos_BS[:, None, :]).astype(jnp.float32)
  return -alibi_slopes(n_heads)[None, :, None, None] * jnp.abs(distance)[:, None, :, :]

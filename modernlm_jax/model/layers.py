"""Building blocks shared by every family: norms, MLPs, embeddings.

Parameters are float32 and carry logical axis names so `train/mesh.py` can shard them; the compute
dtype is applied at use.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from modernlm_jax.model.config import ModelConfig


def compute_dtype(cfg: ModelConfig):
  return jnp.dtype(cfg.dtype)


def param_with_axes(module: nn.Module, name: str, init, shape, axes: tuple[str, ...]):
  """A float32 parameter annotated with logical axis names (one per dimension)."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def normal_init(std: float):
  return nn.initializers.normal(stddev=std)


def residual_init(cfg: ModelConfig):
  """GPT-2's scaled init for projections that write into the residual stream (std / sqrt(2·layers))."""
  return normal_init(cfg.init_std / math.sqrt(2 * cfg.n_layers))


class RMSNorm(nn.Module):
  """RMSNorm with a learnable per-channel scale; statistics in float32 for stability."""

  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias (GPT-2); statistics in float32."""

  eps: float = 1e-5
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = param_with_axes(self, "scale", nn.initializers.ones, (d,), ("norm",))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale
    if self.use_bias:
      y = y + param_with_axes(self, "bias", nn.initializers.zeros, (d,), ("norm",))
    return y.astype(self.dtype)


def make_norm(cfg: ModelConfig, name: str) -> nn.Module:
  if cfg.norm == "rmsnorm":
    return RMSNorm(eps=cfg.norm_eps, dtype=compute_dtype(cfg), name=name)
  if cfg.norm == "layernorm":
    return LayerNorm(eps=cfg.norm_eps, use_bias=True, dtype=compute_dtype(cfg), name=name)
  raise ValueError(f"model.norm={cfg.norm!r} is not a norm; choose 'layernorm' or 'rmsnorm'")


class Dense(nn.Module):
  """x @ W (+ b) over the last axis with logical axis names; W is float32, the matmul runs in `dtype`."""

  features: int
  axes: tuple[str, str]
  use_bias: bool
  kernel_init: object
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = param_with_axes(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.axes)
    # One 2-D GEMM over the flattened rows: XLA:CPU feeds a batched einsum's weight gradient through
    # transposed copies, the flat matmul through none (same math, same parameters).
    lead = x.shape[:-1]
    y = (x.astype(self.dtype).reshape(-1, x.shape[-1]) @ w.astype(self.dtype)).reshape(*lead, self.features)
    if self.use_bias:
      y = y + param_with_axes(self, "bias", nn.initializers.zeros, (self.features,), (self.axes[1],)).astype(self.dtype)
    return y


class MLP(nn.Module):
  """GELU MLP (GPT-2: d -> d_ff -> d, tanh-approximate GELU) or SwiGLU (silu(x W_gate) * (x W_up)) W_down."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.cfg
    dt = compute_dtype(cfg)
    up = lambda name: Dense(cfg.d_ff, ("embed", "mlp"), cfg.use_bias, normal_init(cfg.init_std), dt, name=name)
    if cfg.mlp == "swiglu":
      h_BTF = nn.silu(up("wi_gate")(x_BTD)) * up("wi_up")(x_BTD)
    else:
      h_BTF = nn.gelu(up("wi")(x_BTD), approximate=True)
    return Dense(cfg.d_model, ("mlp", "embed"), cfg.use_bias, residual_init(cfg), dt, name="wo")(h_BTF)


class Embed(nn.Module):
  """Token embedding table [V, D]; `attend` gives tied output logits."""

  num_embeddings: int
  features: int
  axes: tuple[str, str]
  std: float
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = param_with_axes(
      self, "embedding", normal_init(self.std), (self.num_embeddings, self.features), self.axes
    )

  def __call__(self, ids):
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x_BTD):
    return jnp.einsum("btd,vd->btv", x_BTD, self.embedding.astype(x_BTD.dtype))

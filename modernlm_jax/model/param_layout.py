"""Conversions between the default parameter tree and the optional layouts `fused_qkv` / `scan_layers`.

The default tree (`layer_{i}` blocks, separate query/key/value kernels) is what checkpoints, the
Hugging Face exporters and every consumer of named parameters read. The optional layouts exist for
speed (one QKV GEMM; one Block under `lax.scan`, parameters stacked on a leading layer axis); these
functions map a tree either way, so an exporter converts to the default layout and never needs to
know about the others. Pure numpy/jax tree surgery: no model is built.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from modernlm_jax.model.config import ModelConfig

SCANNED_LAYERS = "layers"  # the name of the stacked block in a `scan_layers` tree
_QKV = ("query", "key", "value")


def _unfuse_mixer(mixer: Mapping[str, Any]) -> dict:
  out = {k: v for k, v in mixer.items() if k not in ("qkv_kernel", "qkv_bias")}
  if "qkv_kernel" in mixer:
    w = mixer["qkv_kernel"]  # [..., D, 3, H, Dh]
    for j, name in enumerate(_QKV):
      out[f"{name}_kernel"] = w[..., j, :, :]
    if "qkv_bias" in mixer:
      for j, name in enumerate(_QKV):
        out[f"{name}_bias"] = mixer["qkv_bias"][..., j, :, :]
  return out


def _fuse_mixer(mixer: Mapping[str, Any]) -> dict:
  out = {k: v for k, v in mixer.items() if not any(k == f"{n}_{s}" for n in _QKV for s in ("kernel", "bias"))}
  xp = jnp if isinstance(mixer["query_kernel"], jax.Array) else np
  out["qkv_kernel"] = xp.stack([mixer[f"{n}_kernel"] for n in _QKV], axis=-3)
  if "query_bias" in mixer:
    out["qkv_bias"] = xp.stack([mixer[f"{n}_bias"] for n in _QKV], axis=-3)
  return out


def to_default_layout(params: Mapping[str, Any], cfg: ModelConfig) -> tuple[dict, ModelConfig]:
  """(params, cfg) in the default layout: `layer_{i}` blocks with separate query/key/value kernels."""
  params = dict(params)
  if cfg.scan_layers:
    stacked = params.pop(SCANNED_LAYERS)
    for i in range(cfg.n_layers):
      params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  if cfg.fused_qkv:
    for i, kind in enumerate(cfg.mixers):
      if kind == "attn":
        layer = dict(params[f"layer_{i}"])
        layer["mixer"] = _unfuse_mixer(layer["mixer"])
        params[f"layer_{i}"] = layer
  return params, cfg.replace(scan_layers=False, fused_qkv=False)


def from_default_layout(params: Mapping[str, Any], cfg: ModelConfig) -> dict:
  """The inverse: a default-layout tree re-arranged for `cfg`'s `fused_qkv` / `scan_layers`."""
  params = dict(params)
  if cfg.fused_qkv:
    for i, kind in enumerate(cfg.mixers):
      if kind == "attn":
        layer = dict(params[f"layer_{i}"])
        layer["mixer"] = _fuse_mixer(layer["mixer"])
        params[f"layer_{i}"] = layer
  if cfg.scan_layers:
    layers = [params.pop(f"layer_{i}") for i in range(cfg.n_layers)]
    xp = jnp if isinstance(jax.tree.leaves(layers[0])[0], jax.Array) else np
    params[SCANNED_LAYERS] = jax.tree.map(lambda *xs: xp.stack(xs), *layers)
  return params


def layer_params(params: Mapping[str, Any], cfg: ModelConfig, i: int) -> Any:
  """Layer i's parameters in either layout (a slice of the stack under `scan_layers`)."""
  if cfg.scan_layers:
    return jax.tree.map(lambda x: x[i], params[SCANNED_LAYERS])
  return params[f"layer_{i}"]

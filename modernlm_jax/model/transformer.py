"""The one language model: pre-norm residual blocks of (token mixer, MLP), families set by config.

GPT-2 = learned positions + LayerNorm + GELU + biases + tied embeddings; "modern" = RoPE + RMSNorm +
SwiGLU (+ gate, sinks, ALiBi, ...). Recurrent mixers (selective SSM, RWKV-style) plug in per layer
through `cfg.layer_pattern`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from modernlm_jax.model.attention import init_attention_cache
from modernlm_jax.model.config import ModelConfig
from modernlm_jax.model.layers import MLP, Embed, compute_dtype, make_norm, normal_init, param_with_axes
from modernlm_jax.model.mixers import init_mixer_cache, mixer_class
from modernlm_jax.model.param_layout import SCANNED_LAYERS

_REMAT_POLICIES = {
  "full": None,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
  cfg: ModelConfig
  kind: str = "attn"

  @nn.compact
  def __call__(self, x_BTD, positions_BT, segment_ids_BT, cache, decode_info):
    mixer = mixer_class(self.kind)(self.cfg, name="mixer")
    h_BTD, new_cache = mixer(
      make_norm(self.cfg, "mixer_norm")(x_BTD),
      positions_BT=positions_BT,
      segment_ids_BT=segment_ids_BT,
      cache=cache,
      decode_info=decode_info,
    )
    x_BTD = x_BTD + h_BTD
    x_BTD = x_BTD + MLP(self.cfg, name="mlp")(make_norm(self.cfg, "mlp_norm")(x_BTD))
    return x_BTD, new_cache


def decode_positions(cache_pos_BS, positions_BT, stream_sinks: int | None):
  """Where new tokens go in the cache, and the positions RoPE/ALiBi/learned embeddings should see.

  Linear cache (stream_sinks=None): slot = absolute position. Streaming cache (StreamingLLM): the first
  `stream_sinks` slots keep the first tokens forever; the rest is a rolling window, and positions are
  re-assigned inside the cache (sinks 0..k-1, window k..S-1 by age) so relative distances never exceed
  what the model saw in training. Tokens with a negative position are padding and are not written.
  """
  B, S = cache_pos_BS.shape
  if stream_sinks is None:
    slots_BT = positions_BT
  else:
    k0, window = stream_sinks, S - stream_sinks
    slots_BT = jnp.where(positions_BT < k0, positions_BT, k0 + (positions_BT - k0) % window)
  slots_BT = jnp.where(positions_BT < 0, S, slots_BT)  # out of range -> dropped by the scatter
  kv_pos_BS = cache_pos_BS.at[jnp.arange(B)[:, None], slots_BT].set(positions_BT, mode="drop")
  if stream_sinks is None:
    eff_k_BS, eff_q_BT = kv_pos_BS, positions_BT
  else:
    slot_S = jnp.arange(S)[None, :]
    in_window = (slot_S >= k0) & (kv_pos_BS >= 0)
    oldest_B1 = jnp.min(jnp.where(in_window, kv_pos_BS, jnp.iinfo(jnp.int32).max), axis=1, keepdims=True)
    oldest_B1 = jnp.where(jnp.any(in_window, axis=1, keepdims=True), oldest_B1, k0)
    eff_k_BS = jnp.where(slot_S < k0, kv_pos_BS, k0 + kv_pos_BS - oldest_B1)
    eff_q_BT = jnp.where(positions_BT < k0, positions_BT, k0 + positions_BT - oldest_B1)
  return {"slots_BT": slots_BT, "kv_pos_BS": kv_pos_BS, "eff_k_BS": eff_k_BS, "eff_q_BT": eff_q_BT}


class LanguageModel(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT, positions=None, segment_ids=None, cache=None, stream_sinks=None, return_hidden=False):
    """Logits [B,T,V] in float32; with `cache`, returns (logits, new_cache).

    `return_hidden=True` returns the final-norm hidden states instead of logits (with the cache when one
    is given), so a loss can project to the vocabulary in chunks (`logits_from_hidden`) without
    materialising [B,T,V], and a decoder can project only the positions it samples from.
    """
    cfg = self.cfg
    dt = compute_dtype(cfg)
    B, T = tokens_BT.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    decode_info, embed_positions = None, positions
    if cache is not None:
      decode_info = decode_positions(cache["pos"], positions, stream_sinks)
      embed_positions = decode_info["eff_q_BT"]
      segment_ids = None  # rows of a decode batch are independent sequences

    embed = Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std, dt, name="embed")
    x_BTD = embed(tokens_BT)
    if cfg.positions == "learned":
      table = param_with_axes(
        self, "pos_embed", normal_init(cfg.init_std / 2), (cfg.max_len, cfg.d_model), ("max_len", "embed")
      )
      x_BTD = x_BTD + jnp.take(table, jnp.clip(embed_positions, 0, cfg.max_len - 1), axis=0).astype(dt)

    block_cls = Block
    if cfg.remat != "none" and cache is None:
      block_cls = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=True)
    new_cache = {"pos": decode_info["kv_pos_BS"]} if cache is not None else None
    if cfg.scan_layers:  # one Block traced once, its parameters (and cache) stacked on a leading layer axis
      scanned = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
        length=cfg.n_layers,
        metadata_params={nn.PARTITION_NAME: SCANNED_LAYERS},
      )
      x_BTD, stacked_cache = scanned(cfg, cfg.mixers[0], name=SCANNED_LAYERS)(
        x_BTD, positions, segment_ids, None if cache is None else cache[SCANNED_LAYERS], decode_info
      )
      if cache is not None:
        new_cache[SCANNED_LAYERS] = stacked_cache
    for i, kind in enumerate(() if cfg.scan_layers else cfg.mixers):
      layer_cache = cache[f"layer_{i}"] if cache is not None else None
      x_BTD, layer_new_cache = block_cls(cfg, kind, name=f"layer_{i}")(
        x_BTD, positions, segment_ids, layer_cache, decode_info
      )
      if cache is not None:
        new_cache[f"layer_{i}"] = layer_new_cache
    x_BTD = make_norm(cfg, "final_norm")(x_BTD)
    if return_hidden:
      return (x_BTD, new_cache) if cache is not None else x_BTD
    if cfg.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      w = param_with_axes(self, "lm_head", normal_init(cfg.init_std), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
      logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, w.astype(dt))
    logits_BTV = logits_BTV.astype(jnp.float32)
    return (logits_BTV, new_cache) if cache is not None else logits_BTV


def output_embedding(params, cfg: ModelConfig):
  """The [D, V] matrix that maps final hidden states to logits (tied or not)."""
  return params["embed"]["embedding"].T if cfg.tie_embeddings else params["lm_head"]


def logits_from_hidden(params, cfg: ModelConfig, hidden_BTD):
  w_DV = output_embedding(params, cfg)
  return jnp.einsum("btd,dv->btv", hidden_BTD, w_DV.astype(hidden_BTD.dtype)).astype(jnp.float32)


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None) -> dict:
  """An empty decode cache: absolute position per slot (-1 = empty) and one entry per layer."""
  cache = {"pos": jnp.full((batch_size, max_len), -1, jnp.int32)}
  if cfg.scan_layers:  # homogeneous stack: one cache entry with a leading layer axis
    one = (
      init_attention_cache(cfg, batch_size, max_len, dtype)
      if cfg.mixers[0] == "attn"
      else init_mixer_cache(cfg, cfg.mixers[0], batch_size, dtype)
    )
    cache[SCANNED_LAYERS] = jax.tree.map(lambda x: jnp.broadcast_to(x, (cfg.n_layers, *x.shape)), one)
    return cache
  for i, kind in enumerate(cfg.mixers):
    if kind == "attn":
      cache[f"layer_{i}"] = init_attention_cache(cfg, batch_size, max_len, dtype)
    else:
      cache[f"layer_{i}"] = init_mixer_cache(cfg, kind, batch_size, dtype)
  return cache

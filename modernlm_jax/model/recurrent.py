"""Stateful token mixers (selective SSM, RWKV-6-style time mix) and the "hybrid" family built from them.

`transformer.py` looks mixers up in `MIXER_CLASSES` by the kind named in `cfg.layer_pattern` and asks
`init_mixer_cache` for their decode state, which is O(1) in sequence length (unlike a KV cache).

The hybrid family alternates selective-SSM and RWKV layers (ssm, rwkv, ssm, rwkv, ...) with no attention
and no position table: every layer is a recurrence, so the model carries a conversation of any length in a
fixed-size state and its cost grows linearly with context. RMSNorm + SwiGLU as in the modern family; the
SwiGLU width is sized so totals match GPT-2 at every scale. For a variant with some attention, set
`layer_pattern` (e.g. "ssm,rwkv,ssm,attn") and `positions="rope"`; it is then bounded by its KV cache.
"""

from __future__ import annotations

from modernlm_jax.model import scales
from modernlm_jax.model.config import ModelConfig
from modernlm_jax.model.rwkv import RWKVTimeMix, init_rwkv_cache
from modernlm_jax.model.ssm import SelectiveSSM, init_ssm_cache

MIXER_CLASSES = {"ssm": SelectiveSSM, "rwkv": RWKVTimeMix}
_CACHE_BUILDERS = {"ssm": init_ssm_cache, "rwkv": init_rwkv_cache}

HYBRID_CYCLE = ("ssm", "rwkv")
HYBRID_SSM_STATE = 64  # Mamba-2's default state size per head


def init_mixer_cache(cfg: ModelConfig, kind: str, batch_size: int, dtype=None) -> dict:
  """The decode state of one recurrent layer: fixed size, independent of how many tokens it has seen."""
  if kind not in _CACHE_BUILDERS:
    raise ValueError(f"no recurrent mixer {kind!r}; recurrent kinds are {sorted(_CACHE_BUILDERS)}")
  return _CACHE_BUILDERS[kind](cfg, batch_size, dtype)


def hybrid_pattern(n_layers: int, cycle: tuple[str, ...] = HYBRID_CYCLE) -> tuple[str, ...]:
  return tuple(cycle[i % len(cycle)] for i in range(n_layers))


def hybrid_config(scale: str) -> ModelConfig:
  """The recurrent hybrid at `scale`: GPT-2's layers, width and vocabulary, SwiGLU width matched to its total."""
  ref = scales.gpt2_config(scale)
  base = ref.replace(family="hybrid", positions="none", norm="rmsnorm", mlp="swiglu", use_bias=False,
                     layer_pattern=hybrid_pattern(ref.n_layers), ssm_state=HYBRID_SSM_STATE,
                     ssm_heads=2 * ref.n_heads,  # SSM head width = the attention head width (inner width is 2 d)
                     rwkv_heads=ref.n_heads)
  return base.replace(d_ff=scales.matched_swiglu_width(scales.count_params(ref)["total"], base))


scales.register_family("hybrid", hybrid_config)

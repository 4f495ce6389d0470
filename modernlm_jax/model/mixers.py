"""The table of token mixers by kind (`cfg.layer_pattern`): causal attention, selective SSM, RWKV-6-style time mix.

`transformer.py` builds each layer's mixer with `mixer_class(kind)` and asks `init_mixer_cache` for the decode
state of recurrent layers, which is O(1) in sequence length (unlike a KV cache). The hybrid family built from
the recurrent mixers is a preset in `scales.py`.
"""

from __future__ import annotations

from modernlm_jax.model.attention import CausalSelfAttention
from modernlm_jax.model.config import ModelConfig
from modernlm_jax.model.rwkv import RWKVTimeMix, init_rwkv_cache
from modernlm_jax.model.ssm import SelectiveSSM, init_ssm_cache

MIXER_CLASSES = {"attn": CausalSelfAttention, "ssm": SelectiveSSM, "rwkv": RWKVTimeMix}
_CACHE_BUILDERS = {"ssm": init_ssm_cache, "rwkv": init_rwkv_cache}


def mixer_class(kind: str):
  if kind not in MIXER_CLASSES:
    raise ValueError(f"no token mixer {kind!r}; mixer kinds are {sorted(MIXER_CLASSES)}")
  return MIXER_CLASSES[kind]


def init_mixer_cache(cfg: ModelConfig, kind: str, batch_size: int, dtype=None) -> dict:
  """The decode state of one recurrent layer: fixed size, independent of how many tokens it has seen."""
  if kind not in _CACHE_BUILDERS:
    raise ValueError(f"no recurrent mixer {kind!r}; recurrent kinds are {sorted(_CACHE_BUILDERS)}")
  return _CACHE_BUILDERS[kind](cfg, batch_size, dtype)

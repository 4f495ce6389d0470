"""The model configuration: one frozen dataclass that picks every architectural option.

GPT-2 and the "modern" family are presets of this one config (see `scales.py`); a new idea is a
field with a validated set of values, never a fork of the module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

POSITIONS = ("learned", "rope", "alibi", "rope+alibi", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
GATES = ("none", "headwise", "elementwise")
ATTENTION_IMPLS = ("auto", "reference", "xla", "cudnn", "flash", "splash")
DTYPES = ("float32", "bfloat16", "float16")
MIXERS = ("attn", "ssm", "rwkv")
REMAT = ("none", "full", "dots", "dots_no_batch")


def _check_choice(field: str, value: Any, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f"model.{field}={value!r} is not valid; choose one of {list(valid)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a `LanguageModel`. All sizes are exact; nothing is derived silently."""

  vocab_size: int = 50257
  max_len: int = 1024
  n_layers: int = 12
  d_model: int = 768
  n_heads: int = 12
  d_ff: int = 3072
  family: str = "custom"  # a label only (gpt2 | modern | hybrid | custom); behaviour comes from the fields below
  positions: str = "learned"
  rope_theta: float = 10000.0
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  mlp: str = "gelu"
  use_bias: bool = True
  tie_embeddings: bool = True
  attn_gate: str = "none"
  attn_sinks: bool = False
  qk_norm: bool = False
  attention_impl: str = "auto"
  dtype: str = "float32"
  init_std: float = 0.02
  # One entry per layer: "attn" (softmax attention), "ssm" (selective state space), "rwkv" (RWKV-style time mix).
  # Empty means all attention.
  layer_pattern: tuple[str, ...] = ()
  ssm_state: int = 16  # state size per channel group of the selective SSM
  ssm_heads: int = 0  # 0 -> n_heads
  rwkv_heads: int = 0  # 0 -> n_heads
  remat: str = "none"
  # Parameter-tree layouts for fewer, larger kernels; both change the tree (checkpoints, HF export), so off by default.
  fused_qkv: bool = False  # one [D, 3, H, Dh] "qkv_kernel" instead of query/key/value kernels
  scan_layers: bool = False  # homogeneous stacks: one Block under lax.scan, parameters stacked under "layers"

  def __post_init__(self):
    _check_choice("positions", self.positions, POSITIONS)
    _check_choice("norm", self.norm, NORMS)
    _check_choice("mlp", self.mlp, MLPS)
    _check_choice("attn_gate", self.attn_gate, GATES)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("remat", self.remat, REMAT)
    if isinstance(self.layer_pattern, str):  # "attn,ssm,rwkv" from a command line
      object.__setattr__(self, "layer_pattern", tuple(p for p in self.layer_pattern.split(",") if p))
    else:
      object.__setattr__(self, "layer_pattern", tuple(self.layer_pattern))
    for kind in self.layer_pattern:
      _check_choice("layer_pattern entry", kind, MIXERS)
    if self.layer_pattern and len(self.layer_pattern) != self.n_layers:
      raise ValueError(
        f"model.layer_pattern has {len(self.layer_pattern)} entries but n_layers={self.n_layers}; give one mixer per layer"
      )
    if self.scan_layers and len(set(self.mixers)) > 1:
      raise ValueError(
        f"model.scan_layers=True needs one mixer kind in every layer, got layer_pattern="
        f"{','.join(self.layer_pattern)}; set model.scan_layers=False for hybrid stacks"
      )
    for name in ("vocab_size", "max_len", "n_layers", "d_model", "n_heads", "d_ff"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.d_model % self.n_heads:
      raise ValueError(f"model.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
    if "rope" in self.positions and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}; change d_model or n_heads")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def mixers(self) -> tuple[str, ...]:
    return self.layer_pattern or ("attn",) * self.n_layers

  @property
  def has_attention(self) -> bool:
    return "attn" in self.mixers

  def replace(self, **kwargs) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layer_pattern"] = list(self.layer_pattern)
    return d

  @classmethod
  def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """Builds a config from a dict or ConfigDict; unknown keys are an error listing the valid ones."""
    d = dict(d.items()) if hasattr(d, "items") else dict(d)
    valid = cls.field_names()
    unknown = sorted(set(d) - set(valid))
    if unknown:
      raise ValueError(f"unknown model config key(s) {unknown}; valid keys are {valid}")
    if "layer_pattern" in d and not isinstance(d["layer_pattern"], str):
      d["layer_pattern"] = tuple(d["layer_pattern"])
    return cls(**d)

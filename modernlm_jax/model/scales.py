"""The parameter-matched scale table and the parameter counter.

Every scale has a `gpt2` and a `modern` variant whose totals (tied embeddings counted once) agree
within ±2 %. The GPT-2 rows fix layers and width; the modern row keeps them and sizes its SwiGLU
hidden width so the totals match (it has no position table and no biases to pay for).

Vocabulary per scale: a 50257-entry GPT-2 vocabulary would swallow a 3.5M-30M budget (50257 × 256 is
already 12.9M), so the small scales use an 8192-piece SentencePiece vocabulary trained on the
pretraining corpus, shared by both families and all three small scales (so their losses stay
comparable along a scaling curve); 125M and 253M use GPT-2 BPE. Across tokenizers compare bits/byte.

Run `python -m modernlm_jax.model.scales` to print the table from the code.
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from modernlm_jax.model.config import ModelConfig
from modernlm_jax.model.transformer import LanguageModel

SMALL_VOCAB = 8192
GPT2_VOCAB = 50257

# name -> (n_layers, d_model, n_heads, vocab, max_len, tokenizer kind)
_GPT2_SHAPES: dict[str, tuple[int, int, int, int, int, str]] = {
  "3.5m": (4, 192, 3, SMALL_VOCAB, 512, "sentencepiece"),
  "8m": (7, 256, 4, SMALL_VOCAB, 512, "sentencepiece"),
  "30m": (8, 512, 8, SMALL_VOCAB, 1024, "sentencepiece"),
  "125m": (12, 768, 12, GPT2_VOCAB, 1024, "gpt2"),  # exactly GPT-2 small
  "253m": (16, 1024, 16, GPT2_VOCAB, 1024, "gpt2"),
}
SCALES = tuple(_GPT2_SHAPES)
# Development presets: not part of the matched table; small enough for a 2-core CPU in minutes.
DEV_SCALES: dict[str, tuple[int, int, int, int, int, str]] = {
  "tiny": (4, 128, 4, 2048, 256, "sentencepiece"),
}


def gpt2_config(scale: str) -> ModelConfig:
  n_layers, d, h, vocab, ctx, _ = {**_GPT2_SHAPES, **DEV_SCALES}[scale]
  return ModelConfig(
    family="gpt2",
    vocab_size=vocab,
    max_len=ctx,
    n_layers=n_layers,
    d_model=d,
    n_heads=h,
    d_ff=4 * d,
    positions="learned",
    norm="layernorm",
    mlp="gelu",
    use_bias=True,
    tie_embeddings=True,
  )


def matched_swiglu_width(target_total: int, base: ModelConfig, multiple: int = 16) -> int:
  """SwiGLU hidden width that brings `base` closest to `target_total` parameters."""
  without_mlp = count_params(base.replace(d_ff=multiple))["total"] - base.n_layers * 3 * base.d_model * multiple
  per_unit = base.n_layers * 3 * base.d_model
  return max(multiple, int(round((target_total - without_mlp) / per_unit / multiple)) * multiple)


def modern_config(scale: str) -> ModelConfig:
  if scale == "253m":
    # The reference modern model: 12L, 1024d, 16H, RoPE, RMSNorm, SwiGLU, untied embeddings, GPT-2 vocabulary.
    # d_ff 2688 is 8/3·d rounded to a multiple of 128 (tensor-core friendly) -> 252.4M parameters.
    return ModelConfig(
      family="modern",
      vocab_size=GPT2_VOCAB,
      max_len=1024,
      n_layers=12,
      d_model=1024,
      n_heads=16,
      d_ff=2688,
      positions="rope",
      norm="rmsnorm",
      mlp="swiglu",
      use_bias=False,
      tie_embeddings=False,
    )
  ref = gpt2_config(scale)
  base = ref.replace(family="modern", positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False)
  return base.replace(d_ff=matched_swiglu_width(count_params(ref)["total"], base))


HYBRID_CYCLE = ("ssm", "rwkv")
HYBRID_SSM_STATE = 64  # Mamba-2's default state size per head


def hybrid_pattern(n_layers: int, cycle: tuple[str, ...] = HYBRID_CYCLE) -> tuple[str, ...]:
  return tuple(cycle[i % len(cycle)] for i in range(n_layers))


def hybrid_config(scale: str) -> ModelConfig:
  """The recurrent hybrid at `scale`: GPT-2's layers, width and vocabulary, SwiGLU width matched to its total.

  It alternates selective-SSM and RWKV layers (ssm, rwkv, ssm, rwkv, ...) with no attention and no position
  table: every layer is a recurrence, so the model carries a conversation of any length in a fixed-size state
  and its cost grows linearly with context. For a variant with some attention, set `layer_pattern` (e.g.
  "ssm,rwkv,ssm,attn") and `positions="rope"`; it is then bounded by its KV cache.
  """
  ref = gpt2_config(scale)
  base = ref.replace(
    family="hybrid",
    positions="none",
    norm="rmsnorm",
    mlp="swiglu",
    use_bias=False,
    layer_pattern=hybrid_pattern(ref.n_layers),
    ssm_state=HYBRID_SSM_STATE,
    ssm_heads=2 * ref.n_heads,  # SSM head width = the attention head width (inner width is 2 d)
    rwkv_heads=ref.n_heads,
  )
  return base.replace(d_ff=matched_swiglu_width(count_params(ref)["total"], base))


FAMILIES: dict[str, Callable[[str], ModelConfig]] = {
  "gpt2": gpt2_config,
  "modern": modern_config,
  "hybrid": hybrid_config,
}


def register_family(name: str, builder: Callable[[str], ModelConfig]) -> None:
  """Adds a family (e.g. the recurrent hybrid) to the table; its builder must match the gpt2 totals."""
  FAMILIES[name] = builder


def preset(name: str) -> ModelConfig:
  """`family-scale`, e.g. `modern-8m`, `gpt2-125m`, `modern-tiny`. Unknown names list the valid ones."""
  family, _, scale = name.partition("-")
  valid = preset_names(include_dev=True)
  if family not in FAMILIES or scale not in (*SCALES, *DEV_SCALES):
    raise ValueError(f"unknown model preset {name!r}; valid presets: {valid}")
  return FAMILIES[family](scale)


def preset_names(include_dev: bool = False) -> list[str]:
  scales = (*SCALES, *DEV_SCALES) if include_dev else SCALES
  return [f"{f}-{s}" for s in scales for f in FAMILIES]


def preset_tokenizer(scale: str) -> str:
  return {**_GPT2_SHAPES, **DEV_SCALES}[scale][5]


@functools.lru_cache(maxsize=256)
def count_params(cfg: ModelConfig) -> dict[str, int]:
  """Exact counts from the module's own parameter shapes (jax.eval_shape: nothing is allocated)."""
  shapes = jax.eval_shape(lambda: LanguageModel(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  total = embedding = 0
  for path, leaf in flat:
    n = math.prod(leaf.shape)
    total += n
    top = getattr(path[0], "key", str(path[0]))
    if top in ("embed", "pos_embed", "lm_head"):
      embedding += n
  return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def scale_table(include_dev: bool = False) -> list[dict]:
  rows = []
  for name in preset_names(include_dev):
    cfg = preset(name)
    family, _, scale = name.partition("-")
    counts = count_params(cfg)
    ref_total = count_params(gpt2_config(scale))["total"]
    rows.append(
      {
        "name": name,
        "family": family,
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "d_ff": cfg.d_ff,
        "vocab": cfg.vocab_size,
        "tokenizer": preset_tokenizer(scale),
        "embedding": counts["embedding"],
        "non_embedding": counts["non_embedding"],
        "total": counts["total"],
        "vs_gpt2": counts["total"] / ref_total - 1.0,
      }
    )
  return rows


def format_table(rows: list[dict]) -> str:
  head = (
    f"{'name':<14}{'family':<8}{'layers':>7}{'d_model':>8}{'heads':>6}{'d_ff':>6}{'vocab':>7}  {'tokenizer':<14}"
    f"{'embedding':>13}{'non-embedding':>15}{'total':>13}{'vs gpt2':>9}"
  )
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(
      f"{r['name']:<14}{r['family']:<8}{r['layers']:>7}{r['d_model']:>8}{r['heads']:>6}{r['d_ff']:>6}"
      f"{r['vocab']:>7}  {r['tokenizer']:<14}{r['embedding']:>13,}{r['non_embedding']:>15,}{r['total']:>13,}"
      f"{r['vs_gpt2']:>+9.2%}"
    )
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="Print the parameter-matched scale table.")
  parser.add_argument("--dev", action="store_true", help="also list development presets (tiny)")
  args = parser.parse_args(argv)
  print(format_table(scale_table(include_dev=args.dev)))


if __name__ == "__main__":
  main()

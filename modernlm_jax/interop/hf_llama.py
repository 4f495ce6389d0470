"""Hugging Face `LlamaForCausalLM` (and Qwen3 for QK-norm) checkpoints <-> our `modern` family.

The default modern preset (RoPE, RMSNorm, SwiGLU, no biases) is exactly the Llama architecture with
as many key/value heads as query heads. The mapping:
  * Linear weights: HF stores [out, in]; ours are `x @ W` [in, out]. q/k/v `[D, H, Dh]` <->
    `q_proj.weight [H*Dh, D]` (head-major rows), `out_kernel [H, Dh, D]` <-> `o_proj.weight [D, H*Dh]`.
  * RoPE: our `apply_rope` rotates (x[:Dh/2], x[Dh/2:]) pairs with inv_freq = theta^(-2i/Dh), which is
    HF's `rotate_half` layout, so q/k weights need no permutation (Meta's original interleaved
    checkpoints are the ones HF's own converter permutes; ours never were interleaved).
  * RMSNorm: same formula (float32 statistics, eps inside the rsqrt); `norm_eps` <-> `rms_norm_eps`.
  * SwiGLU: `wi_gate` <-> `gate_proj`, `wi_up` <-> `up_proj`, `wo` <-> `down_proj`; `d_ff` <-> `intermediate_size`.
  * Head: tied to `embed_tokens` unless `tie_word_embeddings` is false (ours: `lm_head [D, V]`).
  * `use_bias` <-> `attention_bias` + `mlp_bias` (both, since our flag covers every projection).
  * QK-norm (RMSNorm over head_dim before RoPE) is Qwen3's `q_norm`/`k_norm`, so such configs export
    as `Qwen3ForCausalLM`.

Options HF has no equivalent for (attention gate, sinks, ALiBi, learned/no positions, recurrent mixers,
LayerNorm, GELU, any model field this module does not know) are refused with the field's name.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from modernlm_jax.interop import hf_gpt2
from modernlm_jax.interop.hf_gpt2 import (
  CheckpointError,
  _read_json,
  check_params_match_config,
  read_hf_state,
)
from modernlm_jax.model.config import ModelConfig

# Fields whose value this module maps (or checks); any other field that differs from its default is refused, so a
# flag added to ModelConfig later cannot be silently dropped by an export.
_MAPPED = {
  "vocab_size",
  "max_len",
  "n_layers",
  "d_model",
  "n_heads",
  "d_ff",
  "positions",
  "rope_theta",
  "norm",
  "norm_eps",
  "mlp",
  "use_bias",
  "tie_embeddings",
  "attn_gate",
  "attn_sinks",
  "qk_norm",
  "layer_pattern",
  "init_std",
}
# Fields that do not change the function the model computes (or only matter for non-attention mixers, which are
# refused anyway).
_IRRELEVANT = {"family", "attention_impl", "dtype", "remat", "ssm_state", "ssm_heads", "rwkv_heads"}
_REQUIRED = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "attn_gate": "none", "attn_sinks": False}
_WHY = {
  "positions": "Llama uses RoPE only (ALiBi, learned or no positions have no HF Llama field)",
  "norm": "Llama uses RMSNorm",
  "mlp": "Llama uses SwiGLU",
  "attn_gate": "HF Llama has no attention output gate",
  "attn_sinks": "HF Llama has no attention-sink logits",
}


def architecture_for(cfg: ModelConfig) -> str:
  """'llama' or 'qwen3' (QK-norm); raises CheckpointError naming every option HF cannot represent."""
  bad = [
    f"model.{k}={getattr(cfg, k)!r} ({_WHY[k]}; needs {v!r})" for k, v in _REQUIRED.items() if getattr(cfg, k) != v
  ]
  if any(kind != "attn" for kind in cfg.mixers):
    bad.append(
      f"model.layer_pattern={list(cfg.layer_pattern)} (recurrent mixers have no HF Llama equivalent; "
      "needs attention in every layer)"
    )
  defaults = ModelConfig()
  for f in dataclasses.fields(ModelConfig):
    if f.name not in _MAPPED | _IRRELEVANT and getattr(cfg, f.name) != getattr(defaults, f.name):
      bad.append(f"model.{f.name}={getattr(cfg, f.name)!r} (not known to the Llama export; it would be dropped)")
  if cfg.qk_norm and cfg.use_bias:
    bad.append("model.qk_norm=True with model.use_bias=True (Qwen3, the HF model with QK-norm, has no MLP biases)")
  if bad:
    raise CheckpointError("this model config cannot be exported as Hugging Face Llama: " + "; ".join(bad))
  return "qwen3" if cfg.qk_norm else "llama"


def hf_config_from(
  cfg: ModelConfig, *, eos_token_id: int | None = None, bos_token_id: int | None = None
) -> dict[str, Any]:
  """The `config.json` dict (LlamaForCausalLM, or Qwen3ForCausalLM when qk_norm) for a modern-family config."""
  arch = architecture_for(cfg)
  for name, tid in (("eos_token_id", eos_token_id), ("bos_token_id", bos_token_id)):
    if tid is not None and not 0 <= tid < cfg.vocab_size:
      raise CheckpointError(f"{name}={tid} is outside the vocabulary [0, {cfg.vocab_size})")
  out: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM" if arch == "qwen3" else "LlamaForCausalLM"],
    "model_type": arch,
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.d_model,
    "intermediate_size": cfg.d_ff,
    "num_hidden_layers": cfg.n_layers,
    "num_attention_heads": cfg.n_heads,
    "num_key_value_heads": cfg.n_heads,
    "head_dim": cfg.head_dim,
    "hidden_act": "silu",
    "max_position_embeddings": cfg.max_len,
    "rms_norm_eps": cfg.norm_eps,
    "initializer_range": cfg.init_std,
    "tie_word_embeddings": cfg.tie_embeddings,
    # Both spellings: transformers >= 5 reads rope_parameters, older versions rope_theta.
    "rope_theta": cfg.rope_theta,
    "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
    "attention_bias": cfg.use_bias,
    "attention_dropout": 0.0,
    "use_cache": True,
    "bos_token_id": bos_token_id,
    "eos_token_id": eos_token_id,
    "pad_token_id": None,
    "dtype": "float32",
  }
  if arch == "llama":
    out.update(mlp_bias=cfg.use_bias, pretraining_tp=1)
  else:
    out.update(
      use_sliding_window=False,
      sliding_window=None,
      max_window_layers=cfg.n_layers,
      layer_types=["full_attention"] * cfg.n_layers,
    )
  return out


def _rope_theta(hf: Mapping[str, Any], source: str) -> float:
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
  if kind != "default":
    raise CheckpointError(
      f"{source} uses rope_type={kind!r}; only plain RoPE (rope_type 'default') maps onto our "
      "model (no NTK/YaRN/llama3 scaling)"
    )
  return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: Mapping[str, Any], *, attention_impl: str = "auto", source: str = "config.json") -> ModelConfig:
  """Our modern-family ModelConfig for a Llama / Qwen3 `config.json` dict; refuses what we cannot reproduce."""
  model_type = hf.get("model_type")
  if model_type not in ("llama", "qwen3"):
    raise CheckpointError(
      f"{source} has model_type={model_type!r}; the Llama import reads model_type 'llama' "
      "(LlamaForCausalLM) or 'qwen3' (QK-norm); GPT-2 checkpoints use --format gpt2"
    )
  missing = [
    k
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    if k not in hf
  ]
  if missing:
    raise CheckpointError(f"{source} lacks {missing}; re-save the model with `save_pretrained` to get a full config")
  d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  bad = []
  kv = int(hf.get("num_key_value_heads") or h)
  if kv != h:
    bad.append(f"num_key_value_heads={kv} != num_attention_heads={h} (grouped-query attention is not implemented)")
  if int(hf.get("head_dim") or d // h) * h != d:
    bad.append(f"head_dim={hf.get('head_dim')} * num_attention_heads={h} != hidden_size={d}")
  if hf.get("hidden_act", "silu") != "silu":
    bad.append(f"hidden_act={hf.get('hidden_act')!r} (needs 'silu' for SwiGLU)")
  attn_bias = bool(hf.get("attention_bias", False))
  mlp_bias = bool(hf.get("mlp_bias", False))
  if model_type == "llama" and attn_bias != mlp_bias:
    bad.append(f"attention_bias={attn_bias} but mlp_bias={mlp_bias} (our use_bias sets both)")
  if model_type == "qwen3" and attn_bias:
    bad.append("attention_bias=True in a Qwen3 config (our QK-norm models have no biases)")
  if hf.get("use_sliding_window"):
    bad.append("use_sliding_window=True (sliding-window attention is not implemented)")
  if int(hf.get("pretraining_tp", 1)) != 1:
    bad.append(f"pretraining_tp={hf.get('pretraining_tp')} (needs 1)")
  if bad:
    raise CheckpointError(f"{source} uses options our model does not implement: " + "; ".join(bad))
  return ModelConfig(
    family="modern",
    vocab_size=int(hf["vocab_size"]),
    max_len=int(hf.get("max_position_embeddings", 2048)),
    n_layers=int(hf["num_hidden_layers"]),
    d_model=d,
    n_heads=h,
    d_ff=int(hf["intermediate_size"]),
    positions="rope",
    rope_theta=_rope_theta(hf, source),
    norm="rmsnorm",
    norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    mlp="swiglu",
    use_bias=attn_bias,
    tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    qk_norm=model_type == "qwen3",
    init_std=float(hf.get("initializer_range", 0.02)),
    attention_impl=attention_impl,
  )


# ----------------------------------------------------------------------------------------------
# Tensors (names as LlamaForCausalLM's state dict: "model." prefix, "lm_head.weight")


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  D, F, V, HD = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads * cfg.head_dim
  shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    shapes.update(
      {
        p + "input_layernorm.weight": (D,),
        p + "post_attention_layernorm.weight": (D,),
        p + "self_attn.q_proj.weight": (HD, D),
        p + "self_attn.k_proj.weight": (HD, D),
        p + "self_attn.v_proj.weight": (HD, D),
        p + "self_attn.o_proj.weight": (D, HD),
        p + "mlp.gate_proj.weight": (F, D),
        p + "mlp.up_proj.weight": (F, D),
        p + "mlp.down_proj.weight": (D, F),
      }
    )
    if cfg.use_bias:
      shapes.update({p + f"self_attn.{n}_proj.bias": (HD,) for n in "qkv"})
      shapes.update(
        {
          p + "self_attn.o_proj.bias": (D,),
          p + "mlp.gate_proj.bias": (F,),
          p + "mlp.up_proj.bias": (F,),
          p + "mlp.down_proj.bias": (D,),
        }
      )
    if cfg.qk_norm:
      shapes.update({p + "self_attn.q_norm.weight": (cfg.head_dim,), p + "self_attn.k_norm.weight": (cfg.head_dim,)})
  if not cfg.tie_embeddings:
    shapes["lm_head.weight"] = (V, D)
  return shapes


def _validated(state: Mapping[str, Any], cfg: ModelConfig, source: str) -> dict[str, np.ndarray]:
  expected = expected_hf_shapes(cfg)
  state = {k if k.startswith(("model.", "lm_head.")) else "model." + k: v for k, v in state.items()}
  unexpected = sorted(
    k
    for k in state
    if k not in expected
    and not (k == "lm_head.weight" and cfg.tie_embeddings)
    and not k.endswith("rotary_emb.inv_freq")
  )
  missing = sorted(set(expected) - set(state))
  if missing:
    raise CheckpointError(
      f"{source} is missing {len(missing)} tensor(s) the config requires, e.g. {missing[:5]}; "
      "the weights do not belong to this config.json"
    )
  if unexpected:
    raise CheckpointError(f"{source} has {len(unexpected)} tensor(s) this config does not use, e.g. {unexpected[:5]}")
  for name, want in expected.items():
    if tuple(state[name].shape) != want:
      raise CheckpointError(
        f"tensor {name!r} in {source} has shape {tuple(state[name].shape)} but config.json "
        f"implies {want}; fix config.json or use the matching weights"
      )
  return {k: np.asarray(state[k], dtype=np.float32) for k in expected}


def hf_state_to_params(state: Mapping[str, Any], cfg: ModelConfig, source: str = "checkpoint") -> dict:
  """LlamaForCausalLM tensors -> our float32 parameter tree (checked against `LanguageModel(cfg)`)."""
  architecture_for(cfg)
  hf = _validated(state, cfg, source)
  D, H, Dh = cfg.d_model, cfg.n_heads, cfg.head_dim
  params: dict[str, Any] = {
    "embed": {"embedding": hf["model.embed_tokens.weight"]},
    "final_norm": {"scale": hf["model.norm.weight"]},
  }
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    mixer = {
      f"{ours}_kernel": hf[p + f"self_attn.{n}_proj.weight"].T.reshape(D, H, Dh)
      for ours, n in (("query", "q"), ("key", "k"), ("value", "v"))
    }
    mixer["out_kernel"] = hf[p + "self_attn.o_proj.weight"].T.reshape(H, Dh, D)
    mlp = {
      ours: {"kernel": hf[p + f"mlp.{n}_proj.weight"].T}
      for ours, n in (("wi_gate", "gate"), ("wi_up", "up"), ("wo", "down"))
    }
    if cfg.use_bias:
      for ours, n in (("query", "q"), ("key", "k"), ("value", "v")):
        mixer[f"{ours}_bias"] = hf[p + f"self_attn.{n}_proj.bias"].reshape(H, Dh)
      mixer["out_bias"] = hf[p + "self_attn.o_proj.bias"]
      for ours, n in (("wi_gate", "gate"), ("wi_up", "up"), ("wo", "down")):
        mlp[ours]["bias"] = hf[p + f"mlp.{n}_proj.bias"]
    if cfg.qk_norm:
      mixer["q_norm"] = {"scale": hf[p + "self_attn.q_norm.weight"]}
      mixer["k_norm"] = {"scale": hf[p + "self_attn.k_norm.weight"]}
    params[f"layer_{i}"] = {
      "mixer_norm": {"scale": hf[p + "input_layernorm.weight"]},
      "mixer": mixer,
      "mlp_norm": {"scale": hf[p + "post_attention_layernorm.weight"]},
      "mlp": mlp,
    }
  if not cfg.tie_embeddings:
    params["lm_head"] = hf["lm_head.weight"].T
  params = jax.tree.map(np.ascontiguousarray, params)
  check_params_match_config(params, cfg)
  return params


def params_to_hf_state(params: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Our modern-family parameter tree -> float32 tensors under LlamaForCausalLM's (or Qwen3's) names."""
  architecture_for(cfg)
  check_params_match_config(params, cfg)
  p = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), dict(params))
  D, HD = cfg.d_model, cfg.n_heads * cfg.head_dim
  out = {"model.embed_tokens.weight": p["embed"]["embedding"], "model.norm.weight": p["final_norm"]["scale"]}
  for i in range(cfg.n_layers):
    layer, h = p[f"layer_{i}"], f"model.layers.{i}."
    mixer, mlp = layer["mixer"], layer["mlp"]
    out[h + "input_layernorm.weight"] = layer["mixer_norm"]["scale"]
    out[h + "post_attention_layernorm.weight"] = layer["mlp_norm"]["scale"]
    for ours, n in (("query", "q"), ("key", "k"), ("value", "v")):
      out[h + f"self_attn.{n}_proj.weight"] = mixer[f"{ours}_kernel"].reshape(D, HD).T
      if cfg.use_bias:
        out[h + f"self_attn.{n}_proj.bias"] = mixer[f"{ours}_bias"].reshape(HD)
    out[h + "self_attn.o_proj.weight"] = mixer["out_kernel"].reshape(HD, D).T
    for ours, n in (("wi_gate", "gate"), ("wi_up", "up"), ("wo", "down")):
      out[h + f"mlp.{n}_proj.weight"] = mlp[ours]["kernel"].T
      if cfg.use_bias:
        out[h + f"mlp.{n}_proj.bias"] = mlp[ours]["bias"]
    if cfg.use_bias:
      out[h + "self_attn.o_proj.bias"] = mixer["out_bias"]
    if cfg.qk_norm:
      out[h + "self_attn.q_norm.weight"] = mixer["q_norm"]["scale"]
      out[h + "self_attn.k_norm.weight"] = mixer["k_norm"]["scale"]
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = p["lm_head"].T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Tokenizer files


def tokenizer_files(tokenizer, out: Path) -> list[str]:
  """Writes the HF form of our tokenizer into `out`; returns the file names (empty when it has no HF form)."""
  from modernlm_jax.data.tokenizers import GPT2Tokenizer, SentencePieceTokenizer, default_gpt2_vocab_dir

  if isinstance(tokenizer, SentencePieceTokenizer):
    shutil.copyfile(tokenizer.path, out / "tokenizer.model")
    tok_config = {
      "tokenizer_class": "LlamaTokenizer",
      "add_bos_token": False,
      "add_eos_token": False,
      "legacy": False,
      "add_prefix_space": None,
      "clean_up_tokenization_spaces": False,
      "eos_token": tokenizer._sp.id_to_piece(tokenizer.eos_id),
      "unk_token": tokenizer._sp.id_to_piece(0),
      "bos_token": None,
      "pad_token": None,
      "model_max_length": 1_000_000_000,
    }
    names = ["tokenizer.model", "tokenizer_config.json"]
  elif isinstance(tokenizer, GPT2Tokenizer):
    folder = default_gpt2_vocab_dir()
    if GPT2Tokenizer(folder).identity != tokenizer.identity:
      return []  # built from other vocabulary files, which the tokenizer object does not keep the path of
    shutil.copyfile(folder / "encoder.json", out / "vocab.json")
    shutil.copyfile(folder / "vocab.bpe", out / "merges.txt")
    tok_config = {
      "tokenizer_class": "GPT2Tokenizer",
      "bos_token": "<|endoftext|>",
      "eos_token": "<|endoftext|>",
      "unk_token": "<|endoftext|>",
      "add_prefix_space": False,
      "model_max_length": 1_000_000_000,
    }
    names = ["vocab.json", "merges.txt", "tokenizer_config.json"]
  else:
    return []
  (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
  return names


# ----------------------------------------------------------------------------------------------
# Directories


def export_hf_llama(
  params: Mapping[str, Any], cfg: ModelConfig, out_dir: str | Path, *, tokenizer=None, eos_token_id: int | None = None
) -> tuple[Path, list[str]]:
  """Writes config.json + model.safetensors (+ tokenizer files) that `AutoModelForCausalLM.from_pretrained` loads."""
  try:
    from safetensors.numpy import save_file
  except ImportError as e:
    raise ImportError("exporting needs `pip install safetensors` (or `pip install -e '.[hf]'`)") from e
  if eos_token_id is None and tokenizer is not None:
    eos_token_id = int(tokenizer.eos_id)
  out = hf_gpt2.write_hf_folder(
    out_dir, params_to_hf_state(params, cfg), hf_config_from(cfg, eos_token_id=eos_token_id), save_file
  )
  if eos_token_id is not None:
    (out / "generation_config.json").write_text(
      json.dumps({"eos_token_id": eos_token_id, "pad_token_id": eos_token_id, "bos_token_id": None}, indent=2) + "\n"
    )
  written = tokenizer_files(tokenizer, out) if tokenizer is not None else []
  return out, written


def import_hf_llama(hf_dir: str | Path, *, attention_impl: str = "auto") -> tuple[dict, ModelConfig]:
  """Loads a local LlamaForCausalLM / Qwen3ForCausalLM directory as `(params, ModelConfig)` of our modern family."""
  d = Path(hf_dir)
  config_path = d / "config.json"
  if not config_path.is_file():
    raise CheckpointError(f"{config_path} is missing; point --hf-dir at a folder written by `save_pretrained`")
  cfg = config_from_hf(_read_json(config_path), attention_impl=attention_impl, source=str(config_path))
  state, source = read_hf_state(d)
  return hf_state_to_params(state, cfg, source), cfg

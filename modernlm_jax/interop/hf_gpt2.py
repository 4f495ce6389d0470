"""Hugging Face GPT-2 checkpoints <-> parameters of our `gpt2` family.

Import reads a local directory written by `save_pretrained` (config.json plus `model.safetensors`,
`pytorch_model.bin`, or a sharded index of either) and returns `(params, ModelConfig)`; export
writes `config.json` + `model.safetensors` that `GPT2LMHeadModel.from_pretrained(dir)` loads.

Layout differences the mapping undoes:
  * HF GPT-2 uses `Conv1D`, whose weight is [in, out] (already our `x @ W` orientation).
  * Attention input projections are fused: `c_attn.weight` is [D, 3D] = [q | k | v], each D wide
    and head-major (H blocks of Dh), which is exactly our [D, H, Dh] after a reshape.
  * The output projection `c_proj.weight` [D, D] reads head-major input: our `out_kernel` [H, Dh, D].
  * The LM head is tied to `wte` unless `tie_word_embeddings` is false.

Safetensors checkpoints load through `safetensors.numpy`, so importing them never needs torch;
torch is needed only for `.bin` state dicts.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from modernlm_jax.model import param_layout
from modernlm_jax.model.config import ModelConfig

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
PARAMS_FILE = "params.msgpack"
MODEL_CONFIG_FILE = "model_config.json"

# All of these compute 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), which is what our GELU MLP uses.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Causal-mask buffers that older transformers versions saved next to the weights; they hold no parameters.
_BUFFER_RE = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_GPT2_EOS_ID = 50256


class CheckpointError(ValueError):
  """A checkpoint that cannot be converted; the message names the file or tensor and the fix."""


# ----------------------------------------------------------------------------------------------
# Configs


def config_from_hf(
  hf_config: Mapping[str, Any], *, attention_impl: str = "auto", source: str = "config.json"
) -> ModelConfig:
  """Our `gpt2`-family ModelConfig for a Hugging Face GPT-2 `config.json` dict."""
  model_type = hf_config.get("model_type")
  architectures = hf_config.get("architectures") or []
  if model_type != "gpt2":
    raise CheckpointError(
      f"{source} has model_type={model_type!r} (architectures={architectures}); only GPT-2 checkpoints "
      "(model_type 'gpt2', e.g. GPT2LMHeadModel) can be imported. Convert other architectures with their own tools."
    )
  missing = [k for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size") if k not in hf_config]
  if missing:
    raise CheckpointError(f"{source} lacks {missing}; re-save the model with `save_pretrained` to get a full config")
  activation = hf_config.get("activation_function", "gelu_new")
  if activation not in _TANH_GELUS:
    raise CheckpointError(
      f"{source} has activation_function={activation!r}; the gpt2 family uses tanh-approximate GELU "
      f"({' / '.join(_TANH_GELUS)}), so this checkpoint's MLP would not be reproduced"
    )
  unsupported = {
    "scale_attn_weights": (hf_config.get("scale_attn_weights", True), True),
    "scale_attn_by_inverse_layer_idx": (hf_config.get("scale_attn_by_inverse_layer_idx", False), False),
    "add_cross_attention": (hf_config.get("add_cross_attention", False), False),
  }
  bad = [f"{k}={got} (needs {want})" for k, (got, want) in unsupported.items() if bool(got) != want]
  if bad:
    raise CheckpointError(f"{source} uses attention options our model does not implement: {', '.join(bad)}")
  d_model = int(hf_config["n_embd"])
  n_inner = hf_config.get("n_inner")
  return ModelConfig(
    family="gpt2",
    vocab_size=int(hf_config["vocab_size"]),
    max_len=int(hf_config["n_positions"]),
    n_layers=int(hf_config["n_layer"]),
    d_model=d_model,
    n_heads=int(hf_config["n_head"]),
    d_ff=int(n_inner) if n_inner else 4 * d_model,
    positions="learned",
    norm="layernorm",
    norm_eps=float(hf_config.get("layer_norm_epsilon", 1e-5)),
    mlp="gelu",
    use_bias=True,
    tie_embeddings=bool(hf_config.get("tie_word_embeddings", True)),
    init_std=float(hf_config.get("initializer_range", 0.02)),
    attention_impl=attention_impl,
  )


def check_gpt2_compatible(cfg: ModelConfig) -> None:
  """Raises unless `cfg` is an architecture GPT2LMHeadModel can represent exactly."""
  wanted = {
    "positions": "learned",
    "norm": "layernorm",
    "mlp": "gelu",
    "use_bias": True,
    "attn_gate": "none",
    "attn_sinks": False,
    "qk_norm": False,
  }
  bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
  if any(kind != "attn" for kind in cfg.mixers):
    bad.append(f"layer_pattern={list(cfg.layer_pattern)} (needs attention in every layer)")
  if bad:
    raise CheckpointError(
      "this model config cannot be exported as GPT-2: "
      + "; ".join(bad)
      + ". Only the gpt2 family (e.g. --preset gpt2-125m) maps onto GPT2LMHeadModel."
    )


def hf_config_from(cfg: ModelConfig, *, eos_token_id: int | None = None) -> dict[str, Any]:
  """The `config.json` dict for our gpt2-family config. `eos_token_id` defaults to GPT-2's 50256 for its vocabulary."""
  check_gpt2_compatible(cfg)
  if eos_token_id is None and cfg.vocab_size == _GPT2_EOS_ID + 1:
    eos_token_id = _GPT2_EOS_ID
  if eos_token_id is not None and not 0 <= eos_token_id < cfg.vocab_size:
    raise CheckpointError(f"eos_token_id={eos_token_id} is outside the vocabulary [0, {cfg.vocab_size})")
  return {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": cfg.vocab_size,
    "n_positions": cfg.max_len,
    "n_embd": cfg.d_model,
    "n_layer": cfg.n_layers,
    "n_head": cfg.n_heads,
    "n_inner": cfg.d_ff,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": cfg.norm_eps,
    "initializer_range": cfg.init_std,
    # GPT-2's own dropout rates, so fine-tuning in transformers behaves like the original model.
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "tie_word_embeddings": cfg.tie_embeddings,
    "use_cache": True,
    "bos_token_id": eos_token_id,
    "eos_token_id": eos_token_id,
    "dtype": "float32",
  }


# ----------------------------------------------------------------------------------------------
# Tensor mapping (HF names are normalised: no "transformer." prefix; "lm_head.weight" kept)


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
  shapes: dict[str, tuple[int, ...]] = {
    "wte.weight": (V, D),
    "wpe.weight": (cfg.max_len, D),
    "ln_f.weight": (D,),
    "ln_f.bias": (D,),
  }
  for i in range(cfg.n_layers):
    p = f"h.{i}."
    shapes.update(
      {
        p + "ln_1.weight": (D,),
        p + "ln_1.bias": (D,),
        p + "attn.c_attn.weight": (D, 3 * D),
        p + "attn.c_attn.bias": (3 * D,),
        p + "attn.c_proj.weight": (D, D),
        p + "attn.c_proj.bias": (D,),
        p + "ln_2.weight": (D,),
        p + "ln_2.bias": (D,),
        p + "mlp.c_fc.weight": (D, F),
        p + "mlp.c_fc.bias": (F,),
        p + "mlp.c_proj.weight": (F, D),
        p + "mlp.c_proj.bias": (D,),
      }
    )
  if not cfg.tie_embeddings:
    shapes["lm_head.weight"] = (V, D)
  return shapes


def normalize_hf_names(state: Mapping[str, Any]) -> dict[str, Any]:
  """Drops the `transformer.` prefix (GPT2LMHeadModel) so GPT2Model checkpoints read the same way."""
  out = {}
  for name, value in state.items():
    key = name[len("transformer.") :] if name.startswith("transformer.") else name
    if key in out:
      raise CheckpointError(f"tensor {key!r} appears both with and without the 'transformer.' prefix")
    out[key] = value
  return out


def validate_hf_state(state: Mapping[str, Any], cfg: ModelConfig, source: str = "checkpoint") -> dict[str, Any]:
  """Checks names and shapes against `cfg`; returns the tensors the model uses (buffers / tied head dropped)."""
  expected = expected_hf_shapes(cfg)
  used, unexpected = {}, []
  for name, value in state.items():
    if name in expected:
      used[name] = value
    elif _BUFFER_RE.match(name) or (name == "lm_head.weight" and cfg.tie_embeddings):
      continue  # mask buffers and the tied head (a copy of wte) carry no extra parameters
    else:
      unexpected.append(name)
  missing = sorted(set(expected) - set(used))
  if missing:
    hint = " (config.json says tie_word_embeddings=false)" if missing == ["lm_head.weight"] else ""
    raise CheckpointError(
      f"{source} is missing {len(missing)} tensor(s) the config requires{hint}, e.g. {missing[:5]}; "
      "the weights do not belong to this config.json"
    )
  if unexpected:
    raise CheckpointError(
      f"{source} has {len(unexpected)} tensor(s) a GPT-2 LM does not use, e.g. {sorted(unexpected)[:5]}; "
      "only GPT2LMHeadModel / GPT2Model checkpoints can be imported"
    )
  for name, want in expected.items():
    got = tuple(used[name].shape)
    if got != want:
      raise CheckpointError(
        f"tensor {name!r} in {source} has shape {got} but config.json (n_layer={cfg.n_layers}, n_embd={cfg.d_model}, "
        f"n_head={cfg.n_heads}, n_inner={cfg.d_ff}, n_positions={cfg.max_len}, vocab_size={cfg.vocab_size}) "
        f"implies {want}; fix config.json or use the matching weights"
      )
  return used


def hf_state_to_params(state: Mapping[str, np.ndarray], cfg: ModelConfig, source: str = "checkpoint") -> dict:
  """Normalised HF tensors -> our float32 parameter tree (validated both against `cfg` and the model's own tree)."""
  hf = {k: np.asarray(v, dtype=np.float32) for k, v in validate_hf_state(state, cfg, source).items()}
  D, H, Dh = cfg.d_model, cfg.n_heads, cfg.head_dim

  def norm(prefix):
    return {"scale": hf[prefix + ".weight"], "bias": hf[prefix + ".bias"]}

  params: dict[str, Any] = {
    "embed": {"embedding": hf["wte.weight"]},
    "pos_embed": hf["wpe.weight"],
    "final_norm": norm("ln_f"),
  }
  for i in range(cfg.n_layers):
    p = f"h.{i}."
    w_qkv, b_qkv = hf[p + "attn.c_attn.weight"], hf[p + "attn.c_attn.bias"]
    mixer = {}
    for j, name in enumerate(("query", "key", "value")):
      mixer[f"{name}_kernel"] = w_qkv[:, j * D : (j + 1) * D].reshape(D, H, Dh)
      mixer[f"{name}_bias"] = b_qkv[j * D : (j + 1) * D].reshape(H, Dh)
    mixer["out_kernel"] = hf[p + "attn.c_proj.weight"].reshape(H, Dh, D)
    mixer["out_bias"] = hf[p + "attn.c_proj.bias"]
    params[f"layer_{i}"] = {
      "mixer_norm": norm(p + "ln_1"),
      "mixer": mixer,
      "mlp_norm": norm(p + "ln_2"),
      "mlp": {
        "wi": {"kernel": hf[p + "mlp.c_fc.weight"], "bias": hf[p + "mlp.c_fc.bias"]},
        "wo": {"kernel": hf[p + "mlp.c_proj.weight"], "bias": hf[p + "mlp.c_proj.bias"]},
      },
    }
  if not cfg.tie_embeddings:
    params["lm_head"] = np.ascontiguousarray(hf["lm_head.weight"].T)
  params = jax.tree.map(np.ascontiguousarray, params)
  default_cfg = cfg.replace(scan_layers=False, fused_qkv=False)
  check_params_match_config(params, default_cfg)
  if cfg != default_cfg:  # model.scan_layers / fused_qkv: the same weights, stacked or fused
    params = param_layout.from_default_layout(params, cfg)
  return params


def params_to_hf_state(params: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Our gpt2-family parameter tree -> float32 tensors under GPT2LMHeadModel's names ("transformer." prefixed)."""
  check_gpt2_compatible(cfg)
  check_params_match_config(params, cfg)
  params, cfg = param_layout.to_default_layout(params, cfg)  # unstack scan_layers / split fused_qkv
  p = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), dict(params))
  D = cfg.d_model
  out = {
    "wte.weight": p["embed"]["embedding"],
    "wpe.weight": p["pos_embed"],
    "ln_f.weight": p["final_norm"]["scale"],
    "ln_f.bias": p["final_norm"]["bias"],
  }
  for i in range(cfg.n_layers):
    layer, h = p[f"layer_{i}"], f"h.{i}."
    mixer = layer["mixer"]
    out[h + "attn.c_attn.weight"] = np.concatenate(
      [mixer[f"{n}_kernel"].reshape(D, D) for n in ("query", "key", "value")], axis=1
    )
    out[h + "attn.c_attn.bias"] = np.concatenate([mixer[f"{n}_bias"].reshape(D) for n in ("query", "key", "value")])
    out[h + "attn.c_proj.weight"] = mixer["out_kernel"].reshape(D, D)
    out[h + "attn.c_proj.bias"] = mixer["out_bias"]
    for ours, theirs in (("mixer_norm", "ln_1"), ("mlp_norm", "ln_2")):
      out[h + theirs + ".weight"] = layer[ours]["scale"]
      out[h + theirs + ".bias"] = layer[ours]["bias"]
    for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
      out[h + f"mlp.{theirs}.weight"] = layer["mlp"][ours]["kernel"]
      out[h + f"mlp.{theirs}.bias"] = layer["mlp"][ours]["bias"]
  state = {"transformer." + k: np.ascontiguousarray(v) for k, v in out.items()}
  if not cfg.tie_embeddings:
    state["lm_head.weight"] = np.ascontiguousarray(p["lm_head"].T)
  return state


def check_params_match_config(params: Mapping[str, Any], cfg: ModelConfig) -> None:
  """Raises naming the first parameter whose path or shape differs from what `LanguageModel(cfg)` creates."""
  from modernlm_jax.model import init_params  # local: keeps `import hf_gpt2` cheap for CLI --help

  expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise CheckpointError(
      f"parameter tree does not match the model config: missing {missing[:5]}, unexpected {extra[:5]}; "
      "pass the config (--preset or model_config.json) these parameters were trained with"
    )
  for path, shape in want.items():
    if got[path] != shape:
      raise CheckpointError(
        f"parameter {path} has shape {got[path]} but the model config needs {shape}; "
        "pass the config (--preset or model_config.json) these parameters were trained with"
      )


# ----------------------------------------------------------------------------------------------
# Files


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from e


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file
  except ImportError as e:
    raise ImportError(f"reading {path} needs `pip install safetensors` (or `pip install -e '.[hf]'`)") from e
  return load_file(str(path))  # bf16 tensors arrive as ml_dtypes.bfloat16 and are cast to float32 later


def _load_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      f"{path} is a PyTorch state dict and reading it needs torch (`pip install -e '.[hf]'`); "
      "a checkpoint saved as model.safetensors imports without torch"
    ) from e
  state = torch.load(str(path), map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items() if hasattr(v, "detach")}


def _load_sharded(index_path: Path, loader) -> dict[str, np.ndarray]:
  weight_map = _read_json(index_path).get("weight_map")
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{index_path} has no 'weight_map'; it is not a sharded checkpoint index")
  state = {}
  for shard in sorted(set(weight_map.values())):
    shard_path = index_path.parent / shard
    if not shard_path.is_file():
      raise CheckpointError(f"{index_path} names shard {shard!r}, which is not in {index_path.parent}")
    state.update(loader(shard_path))
  return state


def read_hf_state(hf_dir: str | Path) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of a local HF checkpoint directory (names normalised) and the file they came from."""
  d = Path(hf_dir)
  candidates = [
    (SAFETENSORS_FILE, _load_safetensors, False),
    (SAFETENSORS_INDEX, _load_safetensors, True),
    (TORCH_FILE, _load_torch, False),
    (TORCH_INDEX, _load_torch, True),
  ]
  for name, loader, sharded in candidates:
    path = d / name
    if path.is_file():
      state = _load_sharded(path, loader) if sharded else loader(path)
      return normalize_hf_names(state), str(path)
  raise CheckpointError(
    f"no weights in {d}: expected one of {[c[0] for c in candidates]} (as written by `save_pretrained`). "
    "Download the model to a local directory first, e.g. "
    "`hf download gpt2 config.json model.safetensors --local-dir DIR`"
  )


def import_hf_gpt2(hf_dir: str | Path, *, attention_impl: str = "auto") -> tuple[dict, ModelConfig]:
  """Loads a local Hugging Face GPT-2 checkpoint directory as `(params, ModelConfig)` of our gpt2 family."""
  d = Path(hf_dir)
  if not d.is_dir():
    raise CheckpointError(f"--hf-dir {d} is not a directory; point it at a folder written by `save_pretrained`")
  config_path = d / "config.json"
  if not config_path.is_file():
    raise CheckpointError(f"{config_path} is missing; a Hugging Face checkpoint directory needs its config.json")
  cfg = config_from_hf(_read_json(config_path), attention_impl=attention_impl, source=str(config_path))
  state, source = read_hf_state(d)
  return hf_state_to_params(state, cfg, source), cfg


def export_hf_gpt2(
  params: Mapping[str, Any], cfg: ModelConfig, out_dir: str | Path, *, eos_token_id: int | None = None
) -> Path:
  """Writes `config.json` + `model.safetensors` that `GPT2LMHeadModel.from_pretrained(out_dir)` loads."""
  try:
    from safetensors.numpy import save_file
  except ImportError as e:
    raise ImportError("exporting needs `pip install safetensors` (or `pip install -e '.[hf]'`)") from e
  return write_hf_folder(
    out_dir, params_to_hf_state(params, cfg), hf_config_from(cfg, eos_token_id=eos_token_id), save_file
  )


def write_hf_folder(out_dir, state: dict, hf_config: dict, save_file) -> Path:
  """`model.safetensors` + `config.json` in `out_dir` (created), as `from_pretrained` reads them."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # transformers refuses safetensors files whose metadata lacks a framework tag.
  save_file(state, str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  return out


# ----------------------------------------------------------------------------------------------
# Our side: msgpack parameters + a JSON ModelConfig next to them


def params_paths(out: str | Path) -> tuple[Path, Path]:
  """`X.msgpack` -> (X.msgpack, X.model_config.json); a directory -> (DIR/params.msgpack, DIR/model_config.json)."""
  out = Path(out)
  if out.suffix == ".msgpack":
    return out, out.with_name(out.stem + "." + MODEL_CONFIG_FILE)
  return out / PARAMS_FILE, out / MODEL_CONFIG_FILE


def save_params(params: Mapping[str, Any], cfg: ModelConfig, out: str | Path) -> tuple[Path, Path]:
  """Writes parameters (flax msgpack) and `cfg.to_dict()` (JSON, readable by `ModelConfig.from_dict`)."""
  from flax import serialization

  params_path, config_path = params_paths(out)
  params_path.parent.mkdir(parents=True, exist_ok=True)
  params_path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, dict(params))))
  config_path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
  return params_path, config_path


def load_params(path: str | Path) -> tuple[dict, ModelConfig | None]:
  """Reads what `save_params` wrote; the config is None when no model_config.json sits next to the file."""
  from flax import serialization

  params_path, config_path = params_paths(path)
  if not params_path.is_file():
    raise CheckpointError(f"{params_path} does not exist; pass a .msgpack file or a directory holding {PARAMS_FILE}")
  params = serialization.msgpack_restore(params_path.read_bytes())
  cfg = ModelConfig.from_dict(_read_json(config_path)) if config_path.is_file() else None
  return params, cfg


def matching_preset(cfg: ModelConfig) -> str | None:
  """The gpt2-family preset with exactly this architecture (e.g. HF `gpt2` -> `gpt2-125m`), if any."""
  from modernlm_jax.model import scales

  def arch(c: ModelConfig) -> dict:
    d = c.to_dict()
    for k in ("attention_impl", "dtype", "remat", "init_std", "family"):
      d.pop(k)
    return d

  for name in scales.preset_names(include_dev=True):
    if name.startswith("gpt2-") and arch(scales.preset(name)) == arch(cfg):
      return name
  return None


def count_parameters(params: Mapping[str, Any]) -> int:
  return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params))

"""Starting a stage from an earlier run's parameters (`config.init_from`).

Accepts a run directory (its newest checkpoint), a `checkpoints/<step>` directory, or a directory
holding `params.msgpack` + `model_config.json` (e.g. imported Hugging Face GPT-2 weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from modernlm_jax import paths


class InitFromError(ValueError):
  pass


def checkpoint_location(path: str) -> tuple[Path, int | None] | None:
  """(checkpoint directory, step or None = newest) for a run directory, its checkpoints/ or one
  checkpoints/<step>; None for an exported params folder (params.msgpack + model_config.json)."""
  p = paths.path(path)
  if not p.exists():
    raise InitFromError(f"init_from={path!r} does not exist; point it at a run directory (with checkpoints/) "
                        "or an exported params directory")
  if (p / "params.msgpack").exists():
    return None
  if (p / "checkpoints").is_dir():
    return p / "checkpoints", None
  if p.name.isdigit() and p.parent.is_dir():
    return p.parent, int(p.name)
  if any(c.name.isdigit() for c in p.iterdir()):
    return p, None
  raise InitFromError(f"init_from={path!r} holds neither checkpoints/ nor params.msgpack; nothing to start from")


def _open_step(ckpt_dir: Path, step: int | None):
  mngr = ocp.CheckpointManager(paths.path(ckpt_dir), item_names=("state", "data", "meta"),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise InitFromError(f"init_from={ckpt_dir} holds no finished checkpoint; train that stage first")
  return mngr, step


def read_meta(path: str) -> dict:
  """The checkpoint metadata (model, tokenizer identity, config) at `path`; {} for exported params."""
  location = checkpoint_location(path)
  if location is None:
    return {}
  mngr, step = _open_step(*location)
  return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {})


def load_params(path: str) -> tuple[dict, dict]:
  """(params as host arrays, metadata with at least `model`) from any supported location."""
  location = checkpoint_location(path)
  if location is None:
    p = paths.path(path)
    cfg_file = p / "model_config.json"
    if not cfg_file.exists():
      raise InitFromError(f"{p} has params.msgpack but no model_config.json next to it")
    params = flax.serialization.msgpack_restore((p / "params.msgpack").read_bytes())
    return params, {"model": json.loads(cfg_file.read_text())}
  mngr, step = _open_step(*location)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  from modernlm_jax.train.checkpoint import verify_fingerprints

  params = restored["state"]["params"]
  verify_fingerprints({"params": params}, restored["meta"], f"init_from={location[0]} step {step}")
  return params, restored["meta"]


def check_same_model(stored_model: dict, model_dict: dict, path: str) -> None:
  """Architecture fields must match; compute-only fields (dtype, kernel, remat) may differ."""
  free = {"dtype", "attention_impl", "remat", "family"}
  stored_model = {**stored_model, "layer_pattern": ",".join(stored_model.get("layer_pattern") or [])
                  if not isinstance(stored_model.get("layer_pattern"), str) else stored_model["layer_pattern"]}
  diff = {k: (stored_model.get(k), v) for k, v in model_dict.items() if k not in free and stored_model.get(k) != v}
  if diff:
    raise InitFromError(f"init_from={path} holds a different model (stored vs configured: {diff}); use the same "
                        "--config preset as the run you start from")


def make_init_params_fn(path: str, model_dict: dict):
  params_host, meta = load_params(path)
  if "model" in meta:
    check_same_model(meta["model"], model_dict, path)

  def init_fn(abstract_params, shardings):
    flat_abs = jax.tree_util.tree_leaves_with_path(abstract_params)
    flat_host = dict(jax.tree_util.tree_leaves_with_path(params_host))
    if len(flat_host) != len(flat_abs):
      raise InitFromError(f"init_from={path}: {len(flat_host)} parameter arrays, the model has {len(flat_abs)}")
    for kp, a in flat_abs:
      if kp not in flat_host or tuple(np.shape(flat_host[kp])) != a.shape:
        raise InitFromError(f"init_from={path}: parameter {jax.tree_util.keystr(kp)} is missing or has shape "
                            f"{np.shape(flat_host.get(kp))} instead of {a.shape}")
    return jax.tree_util.tree_map(lambda a, h, s: jax.device_put(np.asarray(h, np.float32), s),
                                  abstract_params, params_host, shardings)

  return init_fn

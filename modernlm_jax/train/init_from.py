"""Starting a stage from an earlier run's parameters (`config.init_from`).

Accepts whatever `train.checkpoint.locate_run` does: a run directory (its newest checkpoint), a
`checkpoints/<step>` directory, or a directory holding `params.msgpack` + `model_config.json` (e.g. imported
Hugging Face GPT-2 weights).
"""

from __future__ import annotations

import jax
import numpy as np

from modernlm_jax.train import checkpoint as ckpt_lib
from modernlm_jax.train.checkpoint import CheckpointError as InitFromError  # noqa: F401  (the one error class)


def read_meta(path: str) -> dict:
  """The checkpoint metadata (model, tokenizer identity, config) at `path`; the model config for exported params."""
  return ckpt_lib.read_run_meta(ckpt_lib.locate_run(path))


def load_params(path: str) -> tuple[dict, dict]:
  """(params as host arrays, metadata with at least `model`) from any supported location."""
  params, meta, _ = ckpt_lib.load_run_params(ckpt_lib.locate_run(path))
  return params, meta


def check_same_model(stored_model: dict, model_dict: dict, path: str) -> None:
  """Architecture fields must match; compute-only fields (dtype, kernel, remat) may differ."""
  free = {"dtype", "attention_impl", "remat", "family"}
  stored_model = {
    **stored_model,
    "layer_pattern": ",".join(stored_model.get("layer_pattern") or [])
    if not isinstance(stored_model.get("layer_pattern"), str)
    else stored_model["layer_pattern"],
  }
  diff = {k: (stored_model.get(k), v) for k, v in model_dict.items() if k not in free and stored_model.get(k) != v}
  if diff:
    raise InitFromError(
      f"init_from={path} holds a different model (stored vs configured: {diff}); use the same "
      "--config preset as the run you start from"
    )


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
        raise InitFromError(
          f"init_from={path}: parameter {jax.tree_util.keystr(kp)} is missing or has shape "
          f"{np.shape(flat_host.get(kp))} instead of {a.shape}"
        )
    return jax.tree_util.tree_map(
      lambda a, h, s: jax.device_put(np.asarray(h, np.float32), s), abstract_params, params_host, shardings
    )

  return init_fn

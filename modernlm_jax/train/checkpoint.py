"""Orbax checkpoints: train state, data-iterator position, and the run's identity (config, tokenizer).

Saves are asynchronous and atomic (orbax writes into a temporary directory and renames it when the
save is committed), so a run killed mid-save never leaves a checkpoint that looks complete. Restore
walks back from the newest step when one is unreadable, and refuses to start fresh when checkpoints
exist but none can be read: existing work is never silently overwritten.

Orbax checks the structure of what it reads, not the bytes of the arrays: a flipped bit on disk would
load as a slightly different model. So every save also stores, in its metadata, a fingerprint per
array (a position-weighted wrapping sum of its bit patterns, computed on device: one pass over the
state, any single flipped bit changes it), and every restore recomputes and compares them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from modernlm_jax import paths
from modernlm_jax.train.step import TrainState


class CheckpointError(RuntimeError, ValueError):
  """A checkpoint or run that cannot be found, read or used; the message names the path and the fix.

  The one error of every consumer (resume, init_from, evaluation, post-training, export). It is a ValueError
  too, since most of these are a setting that points at the wrong place."""


# Old names of the same error, kept so callers' `except` clauses keep working.
InitFromError = EvalCheckpointError = CheckpointError


_ODD_MULTIPLIER = 0x9E3779B1  # odd weights: a flipped bit k changes the sum by an odd multiple of 2**k (mod 2**32)


def _leaf_fingerprint(x):
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  u = jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).reshape(-1)  # 8-byte items give two words
  weights = (jnp.arange(u.size, dtype=jnp.uint32) * jnp.uint32(_ODD_MULTIPLIER)) | jnp.uint32(1)
  return jnp.sum(u * weights, dtype=jnp.uint32)  # integer sums wrap: the same on any sharding or order


_fingerprint_tree = jax.jit(lambda tree: jax.tree_util.tree_map(_leaf_fingerprint, tree))


def fingerprints(tree) -> dict[str, int]:
  """Array path -> fingerprint, for every leaf of `tree` (works on sharded multi-host arrays too)."""
  leaves = jax.tree_util.tree_leaves_with_path(_fingerprint_tree(tree))
  # Replicated scalars: this process's copy of each, all fetched in one transfer.
  host = jax.device_get([v.addressable_data(0) for _, v in leaves])
  return {jax.tree_util.keystr(path): int(h) for (path, _), h in zip(leaves, host)}


def verify_fingerprints(tree, meta: dict | None, where: str) -> None:
  """Raises CheckpointError naming the arrays whose contents differ from what the save recorded.

  `tree` may be a part of the saved state (e.g. {"params": ...}): only its arrays are compared.
  Checkpoints written before fingerprints existed carry none and pass.
  """
  saved = (meta or {}).get("fingerprints")
  if not saved:
    return
  now = fingerprints(tree)
  bad = sorted(k for k, v in now.items() if k in saved and saved[k] != v)
  if bad:
    raise CheckpointError(
      f"{where}: array contents differ from what was saved (fingerprint mismatch in "
      f"{len(bad)} array(s): {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): "
      "the files were damaged after the save"
    )


def _state_tree(state: TrainState) -> dict:
  tree = {
    "step": state.step,
    "params": state.params,
    "opt_state": state.opt_state,
    "rng": state.rng,
    "skipped": state.skipped,
  }
  if state.ref_params is not None:
    tree["ref_params"] = state.ref_params
  return tree


def _from_tree(tree: dict, template: TrainState) -> TrainState:
  return template.replace(
    step=tree["step"],
    params=tree["params"],
    opt_state=tree["opt_state"],
    rng=tree["rng"],
    skipped=tree["skipped"],
    ref_params=tree.get("ref_params"),
  )


class Checkpointer:
  def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
    if int(keep) < 1:
      raise ValueError(
        f"train.keep_checkpoints={keep} would keep no checkpoint: the trained model would be deleted; "
        "set it to 1 or more"
      )
    self.directory = paths.path(directory)  # local or gs://: orbax writes both
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
      item_names=("state", "data", "meta"),
    )

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, data_state: dict, meta: dict, *, force: bool = False) -> None:
    tree = _state_tree(state)
    meta = {**meta, "fingerprints": fingerprints(tree)}
    try:  # orbax first waits for the previous background save: its failure surfaces here
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), data=ocp.args.JsonSave(data_state or {}), meta=ocp.args.JsonSave(meta)
        ),
        force=force,
      )
    except OSError as e:
      raise save_failure(self.directory, e) from e

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict | None:
    """The run metadata of `step`, else of the newest checkpoint whose metadata is readable."""
    if step is not None:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    for s in reversed(self.steps()):
      try:
        return self.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as e:  # noqa: BLE001 - restore() reports it and falls back past this step
        logging.warning(
          "metadata of checkpoint step %s in %s is unreadable (%s: %s)",
          s,
          self.directory,
          type(e).__name__,
          str(e)[:300],
        )
    return None

  def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict, dict, int]:
    """Restores (state, data_state, meta, step) from `step` or the newest readable checkpoint.

    `abstract_state` holds jax.ShapeDtypeStruct leaves with shardings: arrays are read straight into
    their sharded layout.
    """
    candidates = [step] if step is not None else list(reversed(self.steps()))
    errors = []
    for s in candidates:
      try:
        restored = self.manager.restore(
          s,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_state_tree(abstract_state)),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
          ),
        )
        verify_fingerprints(restored["state"], restored["meta"], f"checkpoint step {s}")
        check_data_position(restored["data"], restored["state"], s)
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous one
        logging.warning(
          "checkpoint at step %s in %s is unreadable (%s: %s); trying an older one",
          s,
          self.directory,
          type(e).__name__,
          str(e)[:300],
        )
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:200]}")
        continue
      if errors:
        self._set_aside(candidates[: candidates.index(s)])
      return _from_tree(restored["state"], abstract_state), dict(restored["data"] or {}), restored["meta"], s
    raise CheckpointError(
      f"no readable checkpoint in {self.directory} (tried {candidates}):\n  "
      + "\n  ".join(errors)
      + "\nRefusing to start from scratch over existing work: move the directory aside or pass a new --workdir."
    )

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable checkpoints out of the way, kept for inspection.

    Left in place, the resumed run could not save those steps again: orbax skips a save whose step
    exists (the unreadable one would stay the newest) or, for the final forced save, raises.
    """
    aside = self.directory.parent / f"{self.directory.name}_unreadable"
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for s in steps:
        target = aside / str(s)
        n = 1
        while target.exists():
          target, n = aside / f"{s}-{n}", n + 1
        (self.directory / str(s)).rename(target)
        logging.warning("moved unreadable checkpoint step %s to %s; training continues from an older one", s, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("modernlm_jax:set_aside_unreadable_checkpoints")
    self.manager.reload()

  def check_saves(self) -> None:
    """Raises CheckpointError (path, free space, fix) when a background save has failed; cheap when none has."""
    try:
      self.manager.check_for_errors()
      if not self.manager.is_saving_in_progress():
        self.manager.wait_until_finished()  # returns at once; re-raises a finished save's failure (the commit thread's)
    except Exception as e:  # noqa: BLE001 - orbax re-raises the writer thread's exception as is
      raise save_failure(self.directory, e) from e

  def close(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - a failed background save surfaces here at the latest
      raise save_failure(self.directory, e) from e
    finally:
      self.manager.close()


def abstract_with_shardings(abstract_state: TrainState, shardings: TrainState) -> TrainState:
  return jax.tree_util.tree_map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
  )


def run_identity(config) -> dict[str, Any]:
  """What must match for a checkpoint to be resumable with this config."""
  return {
    "model": json.loads(json.dumps(config.model.to_dict())),
    "tokenizer_kind": config.tokenizer.kind,
    "global_batch_size": int(config.train.batch_size),
    "optimizer": json.loads(json.dumps(optimizer_settings(config.train))),
  }


def check_identity(stored: dict, current: dict, tokenizer_identity: str | None, workdir: str) -> None:
  if not stored:
    return
  if stored.get("model") != current["model"]:
    diff = {
      k: (stored.get("model", {}).get(k), v) for k, v in current["model"].items() if stored.get("model", {}).get(k) != v
    }
    raise CheckpointError(
      f"{workdir} holds a checkpoint of a different model (stored vs requested: {diff}). Nothing was overwritten; "
      "use a new --workdir, or the stored model settings to resume."
    )
  _check_global_batch(stored, current, workdir)
  stored_tok = stored.get("tokenizer_identity")
  if tokenizer_identity and stored_tok and stored_tok != tokenizer_identity:
    raise CheckpointError(
      f"{workdir} holds a checkpoint trained with tokenizer {stored_tok!r}, but this run uses {tokenizer_identity!r}. "
      "Nothing was overwritten; use a new --workdir or the original tokenizer."
    )


def _check_global_batch(stored: dict, current: dict, workdir: str) -> None:
  """Batches are a pure function of (seed, step, global batch): a resume on any host count sees the same data
  only with the same global batch (per-host rows = global batch / process count)."""
  saved = stored.get("global_batch_size", ((stored.get("config") or {}).get("train") or {}).get("batch_size"))
  now = current.get("global_batch_size")
  if saved is not None and now is not None and int(saved) != int(now):
    raise CheckpointError(
      f"{workdir} was trained with global batch train.batch_size={saved}, but this run asks for {now}: the "
      f"data order and the optimizer state would not continue. Resume with --config.train.batch_size={saved} "
      "(the global batch; it is split over however many hosts run now), or use a new --workdir."
    )


# ----------------------------------------------------------------------------- locating and loading a run


@dataclasses.dataclass(frozen=True)
class RunLocation:
  """Where a run's parameters are: orbax checkpoints (`ckpt_dir`, `step` None = newest) or an exported folder
  (`params_dir` with params.msgpack + model_config.json). `run_dir` holds tokenizer/ etc. when known."""

  given: str
  run_dir: paths.Path | None = None  # epath: local or gs://
  ckpt_dir: paths.Path | None = None
  step: int | None = None
  params_dir: paths.Path | None = None

  @property
  def exported(self) -> bool:
    return self.params_dir is not None


def _named(key: str, path) -> str:
  return f"{key}={str(path)!r}" if key != "checkpoint" else f"checkpoint {str(path)!r}"


def locate_run(path: str | Path, *, key: str = "init_from") -> RunLocation:
  """A run directory (its newest checkpoint), its checkpoints/ folder, one checkpoints/<step>, or an exported
  params folder. `key` names the setting in error messages (init_from, checkpoint, --run ...)."""
  p = paths.path(path)
  fix = (
    "pass --config.checkpoint=<run directory>"
    if key == "checkpoint"
    else "point it at a run directory (with checkpoints/) or an exported params directory"
  )
  if not p.exists():
    raise CheckpointError(f"{_named(key, path)} does not exist; {fix}")
  if (p / "params.msgpack").exists():
    return RunLocation(str(path), run_dir=None, params_dir=p)
  if (p / "checkpoints").is_dir():
    return RunLocation(str(path), run_dir=p, ckpt_dir=p / "checkpoints")
  if p.name.isdigit() and p.parent.is_dir():
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
    return RunLocation(str(path), run_dir=run_dir, ckpt_dir=p.parent, step=int(p.name))
  if p.is_dir() and any(c.name.isdigit() for c in p.iterdir()):
    return RunLocation(str(path), run_dir=p.parent if p.name == "checkpoints" else None, ckpt_dir=p)
  raise CheckpointError(
    f"{_named(key, path)} holds neither checkpoints/ nor params.msgpack; nothing to load. Pass a run directory "
    "written by configs/pretrain.py (or sft/dpo), one of its checkpoints/<step> folders, or an imported params "
    "directory (params.msgpack + model_config.json)"
  )


def _open_step(loc: RunLocation, key: str):
  mngr = ocp.CheckpointManager(
    paths.path(loc.ckpt_dir), item_names=("state", "data", "meta"), options=ocp.CheckpointManagerOptions(read_only=True)
  )
  step = mngr.latest_step() if loc.step is None else loc.step
  if step is None:
    mngr.close()
    raise CheckpointError(
      f"{key}={loc.ckpt_dir} holds no finished checkpoint; train that stage first (or wait for "
      "its first train.checkpoint_every steps)"
    )
  return mngr, int(step)


def _exported_params(loc: RunLocation) -> tuple[dict, dict]:
  import flax.serialization

  cfg_file = loc.params_dir / "model_config.json"
  if not cfg_file.exists():
    raise CheckpointError(
      f"{loc.params_dir} has params.msgpack but no model_config.json next to it; write it with "
      "modernlm_jax.interop.hf_gpt2.save_params"
    )
  params = flax.serialization.msgpack_restore((loc.params_dir / "params.msgpack").read_bytes())
  return params, {"model": json.loads(cfg_file.read_text())}


def read_run_meta(loc: RunLocation, *, key: str = "init_from") -> dict:
  """The checkpoint metadata (model, tokenizer identity, config); for an exported folder, its model config."""
  if loc.exported:
    cfg_file = loc.params_dir / "model_config.json"
    return {"model": json.loads(cfg_file.read_text())} if cfg_file.exists() else {}
  mngr, step = _open_step(loc, key)
  try:
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {})
  finally:
    mngr.close()


def load_run_params(loc: RunLocation, *, key: str = "init_from") -> tuple[Any, dict, int | None]:
  """(params as host arrays, metadata with at least `model`, step or None for exported params); the arrays are
  checked against the fingerprints recorded at save time."""
  if loc.exported:
    params, meta = _exported_params(loc)
    return params, meta, None
  mngr, step = _open_step(loc, key)
  try:
    restored = mngr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    )
  finally:
    mngr.close()
  params, meta = restored["state"]["params"], dict(restored["meta"] or {})
  verify_fingerprints({"params": params}, meta, f"{key}={loc.ckpt_dir} step {step}")
  if "model" not in meta:
    raise CheckpointError(f"checkpoint {loc.ckpt_dir}/{step} has no model config in its metadata")
  return params, meta, step


def check_data_position(data_state: dict | None, state_tree: dict, step: int) -> None:
  """The data iterator must resume where the model stopped: a mismatch (an edited or swapped `data` item) would
  replay or skip batches silently, so it is refused like any damaged checkpoint."""
  data_state = data_state or {}
  position = data_state.get("step", data_state.get("index"))
  model_step = (
    int(jax.device_get(state_tree["step"].addressable_data(0)))
    if hasattr(state_tree["step"], "addressable_data")
    else int(state_tree["step"])
  )
  if model_step != step:
    raise CheckpointError(f"checkpoint step {step} holds a model at step {model_step}")
  if position is not None and int(position) != step:
    raise CheckpointError(
      f"checkpoint step {step}: the data iterator position {position} does not match the model "
      f"step {step} (the data item was edited or comes from another checkpoint)"
    )


def directory_bytes(path: Path) -> int:
  return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def free_bytes(path: Path) -> int | None:
  """Free bytes on the disk holding `path` (None on an object store)."""
  if paths.is_remote(path):
    return None
  path = Path(path)
  while not path.exists():
    path = path.parent
  return shutil.disk_usage(path).free


def _gib(n: int | None) -> str:
  return "unknown (object store)" if n is None else f"{n / 2**30:.2f} GiB"


def save_failure(directory: Path, error: BaseException) -> CheckpointError:
  return CheckpointError(
    f"saving a checkpoint into {directory} failed ({type(error).__name__}: {str(error)[:300]}); free space there: "
    f"{_gib(free_bytes(directory))}. Nothing after the last committed checkpoint is saved. Free disk space (or "
    "lower train.keep_checkpoints) or pass a --workdir on a larger disk, then restart: the run resumes from its "
    "last committed checkpoint."
  )


def check_free_space(directory: Path, abstract_state, keep: int) -> None:
  """Refuses to train when the disk cannot hold one more checkpoint (the newest one's size, else the state's bytes),
  instead of failing at the first save after the work was done. (Object stores have no free-space figure.)"""
  if paths.is_remote(directory):
    return
  steps = sorted((p for p in Path(directory).glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
  need = (
    directory_bytes(steps[-1])
    if steps
    else sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(abstract_state))
  )
  free = free_bytes(directory)
  if free < need:
    raise CheckpointError(
      f"{directory} has {_gib(free)} free, less than one checkpoint needs (~{_gib(need)}; train.keep_checkpoints="
      f"{keep} of them are kept). Free disk space or pass a --workdir on a larger disk before training."
    )


# The global batch size has its own check (_check_global_batch); accum_steps may change (another host count).
SCHEDULE_KEYS = (
  "steps",
  "lr",
  "min_lr_ratio",
  "warmup_steps",
  "schedule",
  "b1",
  "b2",
  "eps",
  "weight_decay",
  "decay_embeddings",
  "grad_clip",
)


def optimizer_settings(train_cfg) -> dict[str, Any]:
  """The train settings a restored optimizer state and learning-rate schedule depend on."""
  return {k: train_cfg.get(k) for k in SCHEDULE_KEYS if k in train_cfg}


def check_schedule(stored: dict, current: dict, *, allow: bool, workdir: str) -> dict[str, tuple]:
  """{key: (stored, now)} of changed optimizer/schedule settings; raises unless `allow` (the caller records them)."""
  saved = (stored or {}).get("optimizer")
  if not saved:
    return {}  # a checkpoint from before these were recorded
  diff = {k: (saved.get(k), v) for k, v in current.items() if k in saved and saved.get(k) != v}
  if diff and not allow:
    listed = ", ".join(f"train.{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
    raise CheckpointError(
      f"{workdir} holds a run trained with other optimizer/schedule settings ({listed}); resuming would jump the "
      "learning-rate schedule. Nothing was overwritten: resume with the stored settings, use a new --workdir, or "
      "set train.allow_schedule_change=True to continue with the new ones (recorded in metrics.jsonl)."
    )
  return diff

"""Damaged checkpoints: refused with the reason, the previous good one is used, existing work never overwritten.

One real run (text corpus, byte tokenizer, checkpoints at steps 2, 4, 6, 8) is trained once; every
test damages a copy of it. A checkpoint that cannot be read is moved to `checkpoints_unreadable/`
(kept for inspection) so the resumed run can write that step again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
import pytest
from kill_worker import worker_config, write_corpus

from modernlm_jax.jobs.pretrain import pretrain_stage
from modernlm_jax.model import ModelConfig, init_params
from modernlm_jax.train import checkpoint as ckpt_lib
from modernlm_jax.train import mesh as mesh_lib
from modernlm_jax.train.loop import train
from modernlm_jax.train.optim import make_optimizer
from modernlm_jax.train.step import create_state, state_shardings

STEPS = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, pristine workdir, losses by step) of one uninterrupted 8-step run."""
  root = tmp_path_factory.mktemp("integrity")
  corpus = write_corpus(root / "corpus.txt")
  config = worker_config(str(corpus), str(root / "token_cache"), STEPS)
  workdir = root / "run"
  losses = {}
  train(config, workdir, pretrain_stage(config, workdir), on_step=lambda m: losses.update({m["step"]: m["loss"]}))
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4, 6, 8]
  return config, workdir, losses


def copy_run(trained, tmp_path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained[1], workdir)
  return workdir


def largest_array_file(step_dir: Path) -> Path:
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate_array_file(step_dir: Path) -> None:
  path = largest_array_file(step_dir)
  os.truncate(path, path.stat().st_size // 2)


def empty_array_file(step_dir: Path) -> None:
  os.truncate(largest_array_file(step_dir), 0)


def _largest_chunk(step_dir: Path):
  """(OCDBT key, stored bytes, data file holding them) of the largest array chunk, found through TensorStore's
  OCDBT index and located in the data file: independent of the order of the chunks in the file, which varies."""
  import tensorstore as ts

  kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{step_dir / 'state'}"}).result()
  chunks = [k for k in kv.list().result() if not k.endswith(b".zarray")]
  key = max(chunks, key=lambda k: len(kv.read(k).result().value))
  value = kv.read(key).result().value
  path = next(p for p in (step_dir / "state").rglob("*") if p.is_file() and value in p.read_bytes())
  return kv, key, value, path


def flip_bit_in_chunk_header(step_dir: Path) -> None:
  """One flipped bit in the size field of the first block header of the largest chunk's zstd frame (RFC 8878
  section 3.1.1): the block no longer matches the frame, so TensorStore fails to decode it. (A blind flip in the
  middle of the file could land here, in entropy-coded data, or in a literal; this case and the next pin two
  of them down.)"""
  _, _, value, path = _largest_chunk(step_dir)
  assert value[:4] == b"\x28\xb5\x2f\xfd", "chunks are expected to be zstd frames"
  descriptor = value[4]
  single_segment = descriptor >> 5 & 1
  fcs_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
  block_header = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + fcs_bytes
  data = bytearray(path.read_bytes())
  data[data.index(value) + block_header + 1] ^= 0x10
  path.write_bytes(bytes(data))


def _decodes_differently(zarray: bytes, chunk: str, original: bytes, damaged: bytes, scratch: Path) -> bool:
  """Whether TensorStore reads the damaged chunk without error, to other values than the original."""
  import numpy as np
  import tensorstore as ts

  def read(value: bytes):
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / ".zarray").write_bytes(zarray)
    (scratch / chunk).write_bytes(value)
    return ts.open({"driver": "zarr", "kvstore": f"file://{scratch}"}).result().read().result()

  try:
    return not np.array_equal(read(original), read(damaged), equal_nan=True)
  except ValueError:  # TensorStore's decode error
    return False


def flip_bit_in_array_file(step_dir: Path) -> None:
  """One flipped bit in the stored (zstd-compressed) bytes of the largest array chunk, at the first position from
  the chunk's middle where the damaged chunk still decodes, to other numbers: the file still reads, the numbers
  differ, so only the fingerprints can tell. (A bit in a block header or the entropy tables makes the read fail
  instead: flipped_bit_in_chunk_header.)"""
  kv, key, value, path = _largest_chunk(step_dir)
  array, _, chunk = key.decode().rpartition("/")
  zarray = kv.read(f"{array}/.zarray".encode()).result().value
  scratch = step_dir.parent.parent / "decode_scratch"
  for offset in range(len(value) // 2, len(value)):
    damaged = bytearray(value)
    damaged[offset] ^= 0x10
    if _decodes_differently(zarray, chunk, value, bytes(damaged), scratch):
      data = path.read_bytes()
      at = data.index(value)
      path.write_bytes(data[:at] + bytes(damaged) + data[at + len(value) :])
      shutil.rmtree(scratch)
      return
  pytest.fail(f"no bit of {key!r} in {path} decodes to other values")


def garbage_data_state(step_dir: Path) -> None:
  (step_dir / "data" / "metadata").write_text('{"version": 1, "step": ')


def empty_step_directory(step_dir: Path) -> None:
  for child in step_dir.iterdir():
    shutil.rmtree(child) if child.is_dir() else child.unlink()


def missing_item(name: str):
  def damage(step_dir: Path) -> None:
    shutil.rmtree(step_dir / name)

  damage.__name__ = f"missing_{name}_item"
  return damage


FAULTS = {  # fault -> a phrase of the reason the refusal must give
  "truncated_array_file": (truncate_array_file, "error while reading"),
  "emptied_array_file": (empty_array_file, "error while reading"),
  "flipped_bit_in_array_file": (flip_bit_in_array_file, "fingerprint mismatch"),
  "flipped_bit_in_chunk_header": (flip_bit_in_chunk_header, "error while reading"),
  "missing_state_item": (missing_item("state"), 'Item "state" was not found'),
  "missing_meta_item": (missing_item("meta"), 'Item "meta" was not found'),
  "missing_data_item": (missing_item("data"), 'Item "data" was not found'),
  "garbage_data_state_json": (garbage_data_state, "JSONDecodeError"),
  "empty_step_directory": (empty_step_directory, "unreadable"),
}


def tree_digest(path: Path) -> dict[str, str]:
  return {
    str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    for p in sorted(path.rglob("*"))
  }


def abstract_state(config):
  """What the loop passes to Checkpointer.restore: shapes, dtypes and shardings of the train state."""
  model_cfg = ModelConfig.from_dict(config.model)
  optimizer = make_optimizer(config.train, jax.eval_shape(lambda: init_params(model_cfg, 0)))
  abstract = jax.eval_shape(lambda: create_state(model_cfg, optimizer, config.seed))
  shardings = state_shardings(abstract, model_cfg, mesh_lib.make_mesh(config.mesh))
  return ckpt_lib.abstract_with_shardings(abstract, shardings)


def readable(ckpt_dir: Path, step: int) -> bool:
  mngr = ocp.CheckpointManager(
    ckpt_dir, item_names=("state", "data", "meta"), options=ocp.CheckpointManagerOptions(read_only=True)
  )
  restored = mngr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()),
  )
  return restored["meta"]["step"] == step


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_damaged_newest_checkpoint_is_refused_with_reason_and_set_aside(fault, trained, tmp_path, caplog):
  damage, reason = FAULTS[fault]
  workdir = copy_run(trained, tmp_path)
  damage(workdir / "checkpoints" / "8")
  # A leftover of a save that was killed before its commit must be ignored, never loaded.
  shutil.copytree(workdir / "checkpoints" / "6", workdir / "checkpoints" / "10.orbax-checkpoint-tmp-1700000000")
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
  with caplog.at_level(logging.WARNING):
    _, data_state, meta, step = ckpt.restore(abstract_state(trained[0]))
  ckpt.close()
  assert step == 6 and meta["step"] == 6 and data_state["step"] == 6
  refusal = " ".join(r.getMessage() for r in caplog.records if "step 8" in r.getMessage())
  assert "unreadable" in refusal and reason in refusal, refusal
  assert sorted(p.name for p in (workdir / "checkpoints_unreadable").iterdir()) == ["8"]
  assert not (workdir / "checkpoints" / "8").exists()


@pytest.mark.slow
def test_resume_falls_back_past_three_damaged_checkpoints_with_identical_losses(trained, tmp_path, caplog):
  config, _, reference = trained
  workdir = copy_run(trained, tmp_path)
  truncate_array_file(workdir / "checkpoints" / "8")
  missing_item("meta")(workdir / "checkpoints" / "6")  # the run identity check must not crash on it either
  missing_item("state")(workdir / "checkpoints" / "4")
  damaged_size = largest_array_file(workdir / "checkpoints" / "8").stat().st_size
  losses = {}
  with caplog.at_level(logging.WARNING):
    train(config, workdir, pretrain_stage(config, workdir), on_step=lambda m: losses.update({m["step"]: m["loss"]}))
  assert sorted(losses) == [3, 4, 5, 6, 7, 8]  # resumed from step 2, the newest readable checkpoint
  assert losses == {s: reference[s] for s in losses}  # and its data-iterator position: the same batches
  messages = "\n".join(r.getMessage() for r in caplog.records)
  for s in (8, 6, 4):
    assert f"checkpoint at step {s} in {workdir / 'checkpoints'} is unreadable" in messages
    assert f"moved unreadable checkpoint step {s} to {workdir / 'checkpoints_unreadable' / str(s)}" in messages
  aside = workdir / "checkpoints_unreadable"
  assert sorted(p.name for p in aside.iterdir()) == ["4", "6", "8"]
  assert largest_array_file(aside / "8").stat().st_size == damaged_size  # kept as it was, for inspection
  assert all(readable(workdir / "checkpoints", s) for s in (2, 4, 6, 8))  # written again by the resumed run


@pytest.mark.slow
def test_no_readable_checkpoint_stops_and_touches_nothing(trained, tmp_path):
  config, _, _ = trained
  workdir = copy_run(trained, tmp_path)
  for step_dir in (workdir / "checkpoints").iterdir():
    truncate_array_file(step_dir)
  before = tree_digest(workdir)
  with pytest.raises(
    ckpt_lib.CheckpointError,
    match=r"(?s)no readable checkpoint.*tried \[8, 6, 4, 2\].*"
    r"Refusing to start from scratch over existing work",
  ):
    train(config, workdir, pretrain_stage(config, workdir))
  assert tree_digest(workdir) == before  # no fresh start, nothing moved, nothing overwritten


@pytest.mark.parametrize("change", ["tokenizer", "data"])
def test_resume_with_other_tokenizer_or_data_is_refused_and_checkpoints_unchanged(change, trained, tmp_path):
  config = trained[0].copy_and_resolve_references()
  workdir = copy_run(trained, tmp_path)
  if change == "tokenizer":
    config.tokenizer.update(dict(kind="sentencepiece", vocab_size=280))  # trained into <workdir>/tokenizer
    expected = r"trained with tokenizer 'bytes-v1', but this run uses 'sentencepiece-280-.*Nothing was overwritten"
  else:
    other = write_corpus(tmp_path / "other.txt")
    other.write_text(other.read_text() + "\n\none more paragraph")
    config.data.source = f"text:{other}"
    expected = r"saved data iterator state does not match this data pipeline"
  before = tree_digest(workdir / "checkpoints")
  stage = pretrain_stage(config, workdir)
  with pytest.raises((ckpt_lib.CheckpointError, ValueError), match=expected):
    train(config, workdir, stage)
  assert tree_digest(workdir / "checkpoints") == before


def test_fingerprints_catch_every_single_bit_flip_and_check_only_the_given_part():
  import jax.numpy as jnp
  import numpy as np

  state = {
    "params": {"w": jnp.linspace(-1, 1, 64, dtype=jnp.float32).reshape(8, 8), "b": jnp.ones(3, jnp.bfloat16)},
    "step": jnp.array(7, jnp.int32),
  }
  meta = {"fingerprints": ckpt_lib.fingerprints(state)}
  ckpt_lib.verify_fingerprints(state, meta, "same")  # unchanged: passes
  ckpt_lib.verify_fingerprints({"params": state["params"]}, meta, "part")  # a part of the saved tree: passes
  ckpt_lib.verify_fingerprints(state, {}, "old checkpoint without fingerprints")  # nothing recorded: passes
  words = np.asarray(state["params"]["w"]).view(np.uint32)
  for bit in range(32):
    flipped = words.copy()
    flipped[3, 5] ^= np.uint32(1 << bit)
    damaged = {"params": {**state["params"], "w": jnp.asarray(flipped.view(np.float32))}}
    with pytest.raises(ckpt_lib.CheckpointError, match=r"fingerprint mismatch in 1 array\(s\): \['params'\]\['w'\]"):
      ckpt_lib.verify_fingerprints(damaged, meta, "flipped")

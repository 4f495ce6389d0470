"""Bad input fails early with a message that names the problem and the fix, before any work is overwritten.

(Unknown config keys, a non-finite loss stopping the run, and a model change on resume are covered in
test_train.py; the tokenizer and data changes on resume in test_checkpoint_integrity.py.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from kill_worker import worker_config, write_corpus
from train_utils import synthetic_stage, tiny_config

from modernlm_jax.data import sources
from modernlm_jax.data.pipeline import make_train_iterator
from modernlm_jax.data.posttrain_pipeline import default_posttrain_data_config, load_posttrain_data
from modernlm_jax.data.tokenizers import ByteTokenizer
from modernlm_jax.jobs import pretrain
from modernlm_jax.jobs.pretrain import pretrain_stage
from modernlm_jax.train.init_from import InitFromError
from modernlm_jax.train.loop import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- through the real entry point


@pytest.fixture(scope="module")
def main_failures(tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
  """Each bad command line run through `python -m modernlm_jax.main`, all at once: (rc, stderr, workdir)."""
  tmp = tmp_path_factory.mktemp("main")
  (tmp / "empty.txt").write_text("  \n\n \t \n\n")
  (tmp / "bad.jsonl").write_text('{"text": "a fine first row"}\n{"text": "an unclosed string}\n{"text": "x"}\n')
  cases = {
    "wrong_type": ["--config.train.steps=abc"],
    "missing_path": [f"--config.data.source=text:{tmp}/no_such_dir/*.txt"],
    "empty_dataset": [f"--config.data.source=text:{tmp}/empty.txt"],
    "malformed_jsonl": [f"--config.data.source=jsonl:{tmp}/bad.jsonl"],
  }
  procs = {}
  for name, args in cases.items():
    workdir = tmp / name
    procs[name] = (
      subprocess.Popen(
        [sys.executable, "-m", "modernlm_jax.main", "--config=configs/pretrain.py", f"--workdir={workdir}", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      ),
      workdir,
    )
  out = {}
  for name, (proc, workdir) in procs.items():
    _, stderr = proc.communicate(timeout=300)
    out[name] = (proc.returncode, stderr, workdir)
  return out


MAIN_EXPECTED = {
  "wrong_type": r"--config\.train\.steps=abc: invalid literal for int\(\)",
  "missing_path": r"no files match the data pattern '.*/no_such_dir/\*\.txt'; check the path",
  "empty_dataset": r"'text:.*/empty\.txt' has no documents \(empty or whitespace-only\?\); check the files",
  "malformed_jsonl": r"bad\.jsonl:2: malformed JSONL row \(invalid JSON: .*\); fix the file or set "
  r"data\.skip_bad_rows=True",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MAIN_EXPECTED))
def test_main_rejects_bad_input_with_a_clear_message(main_failures, case):
  rc, stderr, workdir = main_failures[case]
  assert rc != 0
  assert re.search(MAIN_EXPECTED[case], stderr), stderr[-2000:]
  assert not (workdir / "checkpoints").exists()


def test_jsonl_row_with_lone_surrogate_escape_is_a_malformed_row(tmp_path):
  # "\ud800" is valid JSON but not encodable text: it must be reported with file and line, not crash a tokenizer.
  path = tmp_path / "rows.jsonl"
  path.write_text('{"text": "one"}\n{"text": "two \\ud800 three"}\n{"text": "four"}\n')
  with pytest.raises(
    ValueError,
    match=r"rows\.jsonl:2: malformed JSONL row \(field 'text' holds an unpaired "
    r"surrogate escape",
  ):
    sources.load_documents(f"jsonl:{path}", "all")
  loaded = sources.read_source(f"jsonl:{path}", "all", skip_bad_rows=True)
  assert loaded.texts == ["one", "four"] and loaded.skipped_rows == 1


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_overlong_posttrain_examples_are_truncated_and_counted_or_refused_when_none_fit(kind, tmp_path):
  path = tmp_path / f"{kind}.jsonl"
  rows = []
  for i in range(8):
    long = f"response {i} " + "and so on " * 60  # ~600 bytes, ten times the row length
    rows.append(
      {"prompt": f"question {i}? " * 20, "response": long}
      if kind == "sft"
      else {"prompt": f"question {i}? " * 20, "chosen": long, "rejected": "no. " + long}
    )
  path.write_text("\n".join(json.dumps(r) for r in rows))
  cfg = default_posttrain_data_config(kind)
  cfg.update(dict(source=f"jsonl:{path}", seq_len=64, truncation="skip", val_min_records=2))
  none_fit = r"no usable training examples in .*'skipped_too_long': 6, .*'kept': 0\}\); check data\.source"
  with pytest.raises(ValueError, match=none_fit + r", data\.format and data\.seq_len"):
    load_posttrain_data(cfg, ByteTokenizer(), kind)
  cfg.truncation = "prompt_left"
  data = load_posttrain_data(cfg, ByteTokenizer(), kind)
  assert data.stats["truncated_prompt"] == 8 and data.stats["truncated_response"] == 8
  for ex in data.train + data.val:
    if kind == "sft":
      assert len(ex.ids) <= 64 and ex.mask.any()
    else:
      assert len(ex.prompt) + max(len(ex.chosen), len(ex.rejected)) <= 64


# ----------------------------------------------------------------------------- run setup


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (fake) devices: XLA_FLAGS set by the root conftest.py")
def test_train_rejects_batch_not_divisible_by_data_parallel_size_before_any_work(tmp_path):
  cfg = tiny_config(batch_size=6, mesh=(2, 2, 1))
  with pytest.raises(
    ValueError,
    match=r"global batch size 6 is not divisible by the data-parallel size 4 "
    r"\(mesh data=2 × fsdp=2\); pick a multiple of 4",
  ):
    train(cfg, tmp_path, synthetic_stage(cfg))
  cfg = tiny_config(batch_size=6, accum_steps=4, mesh=(1, 1, 1))
  with pytest.raises(ValueError, match=r"train\.batch_size=6 must be divisible by train\.accum_steps=4"):
    train(cfg, tmp_path, synthetic_stage(cfg))
  assert not (tmp_path / "checkpoints").exists()


def test_train_rejects_mesh_larger_than_the_devices(tmp_path):
  n = jax.device_count()
  cfg = tiny_config(mesh=(2 * n, 1, 1))
  with pytest.raises(ValueError, match=rf"needs {2 * n} devices but only {n}"):
    train(cfg, tmp_path, synthetic_stage(cfg))
  assert not (tmp_path / "checkpoints").exists()


@pytest.fixture(scope="module")
def corpus_config(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  return worker_config(str(write_corpus(root / "corpus.txt")), str(root / "token_cache"), steps=6)


def test_init_from_pointing_at_nothing(corpus_config, tmp_path):
  (tmp_path / "empty_dir").mkdir()
  unfinished = tmp_path / "killed_run" / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
  unfinished.mkdir(parents=True)
  cases = {
    tmp_path / "missing": r"init_from='.*/missing' does not exist; point it at a run directory",
    tmp_path / "empty_dir": r"init_from='.*/empty_dir' holds neither checkpoints/ nor params\.msgpack",
    tmp_path / "killed_run": r"init_from=.*/killed_run/checkpoints holds no finished checkpoint; train that stage",
  }
  for path, expected in cases.items():
    config = corpus_config.copy_and_resolve_references()
    config.init_from = str(path)
    with pytest.raises(InitFromError, match=expected):
      pretrain.run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- non-finite guard


class PoisonOneBatch:
  """The real training iterator, except that batch `bad` gets an infinite loss weight in row 0."""

  def __init__(self, inner, bad: int):
    self.inner, self.bad, self.index = inner, bad, 0

  def __next__(self):
    batch = dict(next(self.inner))
    if self.index == self.bad:
      batch["loss_mask"] = batch["loss_mask"].copy()
      batch["loss_mask"][0, 0] = np.inf
    self.index += 1
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)
    self.index = int(state["step"])


@pytest.mark.slow
def test_nonfinite_guard_reports_the_data_position_of_the_bad_batch(corpus_config, tmp_path):
  config = corpus_config.copy_and_resolve_references()
  config.train.async_checkpoint = False
  stage = pretrain_stage(config, tmp_path)
  stage.train_iter = PoisonOneBatch(stage.train_iter, bad=3)
  with pytest.raises(NonFiniteLossError, match=r"at step 3 .*last good checkpoint: step 2") as err:
    train(config, tmp_path, stage)
  position = json.loads(re.search(r"data position (\{.*?\})\.", str(err.value)).group(1))
  # The position is the iterator state right after the bad batch: restoring it finds that batch again.
  fresh = make_train_iterator(
    config.data, stage.tokenizer, seed=int(config.seed), global_batch_size=int(config.train.batch_size)
  )
  fresh.set_state(position)
  assert fresh.step == 4
  bad = fresh.batch_at(fresh.step - 1)
  reference = make_train_iterator(
    config.data, stage.tokenizer, seed=int(config.seed), global_batch_size=int(config.train.batch_size)
  )
  for _ in range(3):
    next(reference)
  np.testing.assert_array_equal(next(reference)["inputs"], bad["inputs"])

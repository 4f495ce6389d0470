"""One locator for every consumer of a run (resume, init_from, evaluation, post-training, export)."""

import pytest

from modernlm_jax.eval import checkpoint_model
from modernlm_jax.train import checkpoint as ckpt_lib
from modernlm_jax.train import init_from


def test_one_error_class_under_every_old_name():
  assert init_from.InitFromError is checkpoint_model.EvalCheckpointError is ckpt_lib.CheckpointError
  assert issubclass(ckpt_lib.CheckpointError, ValueError) and issubclass(ckpt_lib.CheckpointError, RuntimeError)


def test_locations_of_a_run_its_checkpoints_a_step_and_an_export(tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints" / "4").mkdir(parents=True)
  (run / "checkpoints" / "8").mkdir()
  exported = tmp_path / "hf"
  exported.mkdir()
  (exported / "params.msgpack").write_bytes(b"")
  loc = ckpt_lib.locate_run(run)
  assert (loc.run_dir, loc.ckpt_dir, loc.step, loc.exported) == (run, run / "checkpoints", None, False)
  loc = ckpt_lib.locate_run(run / "checkpoints")
  assert (loc.run_dir, loc.ckpt_dir, loc.step) == (run, run / "checkpoints", None)
  loc = ckpt_lib.locate_run(run / "checkpoints" / "4")
  assert (loc.run_dir, loc.ckpt_dir, loc.step) == (run, run / "checkpoints", 4)
  loc = ckpt_lib.locate_run(exported)
  assert loc.exported and loc.params_dir == exported and loc.run_dir is None


@pytest.mark.parametrize(
  "key,expected",
  [
    ("init_from", r"init_from='.*/nope' does not exist; point it at a run directory"),
    ("checkpoint", r"checkpoint '.*/nope' does not exist; pass --config.checkpoint=<run directory>"),
  ],
)
def test_missing_path_names_the_setting_and_the_fix(tmp_path, key, expected):
  with pytest.raises(ckpt_lib.CheckpointError, match=expected):
    ckpt_lib.locate_run(tmp_path / "nope", key=key)


def test_a_folder_with_nothing_to_load_says_what_would_do(tmp_path):
  with pytest.raises(ckpt_lib.CheckpointError, match=r"holds neither checkpoints/ nor params\.msgpack.*run directory"):
    ckpt_lib.locate_run(tmp_path)


def test_exported_params_without_their_model_config_are_refused(tmp_path):
  (tmp_path / "params.msgpack").write_bytes(b"")
  with pytest.raises(ckpt_lib.CheckpointError, match="no model_config.json next to it"):
    ckpt_lib.load_run_params(ckpt_lib.locate_run(tmp_path))

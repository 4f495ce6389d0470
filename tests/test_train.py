"""Training loop: sharding parity, exact resume, gradient accumulation, overfitting, failure handling."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import synthetic_stage, tiny_config

from modernlm_jax.model import ModelConfig
from modernlm_jax.train import checkpoint as ckpt_lib
from modernlm_jax.train import mesh as mesh_lib
from modernlm_jax.train.loop import NonFiniteLossError, train
from modernlm_jax.train.optim import learning_rate_schedule, make_optimizer
from modernlm_jax.train.registry import make_objective
from modernlm_jax.train.step import create_state, make_train_step
from modernlm_jax.train.synthetic import SyntheticBatches


def run_losses(config, workdir, stage=None):
  losses = []
  out = train(config, workdir, stage or synthetic_stage(config), on_step=lambda m: losses.append(m["loss"]))
  return losses, out


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices: XLA_FLAGS set by the root conftest.py")
def test_mesh_shapes_give_the_same_losses_and_shard_params(tmp_path):
  results = {}
  for shape in [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    cfg = tiny_config(steps=6, mesh=shape)
    results[shape] = run_losses(cfg, tmp_path / "x".join(map(str, shape)))
  ref = results[(1, 1, 1)][0]
  assert len(ref) == 6  # one metrics row per step
  for shape, (losses, out) in results.items():
    np.testing.assert_allclose(losses, ref, rtol=2e-4, err_msg=str(shape))
  params = results[(2, 2, 2)][1]["params"]
  spec = lambda leaf: leaf.sharding.spec
  assert spec(params["layer_0"]["mlp"]["wi_gate"]["kernel"]) == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert spec(params["layer_0"]["mixer"]["query_kernel"])[:2] == ("fsdp", "tensor")
  assert spec(params["embed"]["embedding"]) == jax.sharding.PartitionSpec("tensor", "fsdp")
  w = params["layer_0"]["mlp"]["wi_gate"]["kernel"]
  assert w.addressable_shards[0].data.shape == (32 // 2, 64 // 2)  # really split over fsdp=2 and tensor=2


@pytest.mark.slow
def test_exact_resume(tmp_path):
  straight = tiny_config(steps=6, checkpoint_every=3, mesh=(1, 1, 1))
  losses_a, out_a = run_losses(straight, tmp_path / "a")
  train(straight, tmp_path / "b", synthetic_stage(straight), stop_at=3)
  assert ckpt_lib.Checkpointer(tmp_path / "b" / "checkpoints").latest_step() == 3
  losses_b2, out_b = run_losses(straight, tmp_path / "b")  # restores step 3 + data position, runs 3 more
  np.testing.assert_array_equal(losses_a[3:], losses_b2[: len(losses_a[3:])])
  assert out_a["loss"] == out_b["loss"]
  chex.assert_trees_all_equal(jax.device_get(out_a["params"]), jax.device_get(out_b["params"]))


@pytest.mark.slow
def test_gradient_accumulation_equals_big_batch():
  cfg = tiny_config(batch_size=8, mesh=(1, 1, 1))
  model_cfg = ModelConfig.from_dict(cfg.model)
  params_shape = jax.eval_shape(lambda: create_state(model_cfg, _Identity(), 0).params)
  opt = make_optimizer(cfg.train, params_shape)
  sched = learning_rate_schedule(cfg.train)
  obj = make_objective(cfg)
  batch = SyntheticBatches(batch_size=8, seq_len=16, vocab_size=64).batch_at(0)
  batch["loss_mask"][:, :5] = 0.0  # unequal token counts across micro-batches still accumulate exactly
  batch["loss_mask"][0] = 0.0
  state = create_state(model_cfg, opt, 0)
  big, m_big = jax.jit(make_train_step(obj, opt, sched, accum_steps=1))(state, batch)
  micro = {k: v.reshape(4, 2, *v.shape[1:]) for k, v in batch.items()}
  acc, m_acc = jax.jit(make_train_step(obj, opt, sched, accum_steps=4))(state, micro)
  np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-5)
  np.testing.assert_allclose(m_acc["grad_norm"], m_big["grad_norm"], rtol=1e-4)
  chex.assert_trees_all_close(acc.params, big.params, atol=1e-6)


class _Identity:
  def init(self, params):
    return ()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_overfits_a_tiny_fixed_batch(family):
  cfg = tiny_config(family, batch_size=4, lr=1e-2, warmup_steps=5, steps=150, grad_clip=1.0, weight_decay=0.0)
  model_cfg = ModelConfig.from_dict(cfg.model)
  opt = make_optimizer(cfg.train, jax.eval_shape(lambda: create_state(model_cfg, _Identity(), 0).params))
  step = jax.jit(make_train_step(make_objective(cfg), opt, learning_rate_schedule(cfg.train)))
  rng = np.random.default_rng(0)
  seq = rng.integers(0, 64, size=(4, 17)).astype(np.int32)  # random tokens: only memorisation lowers the loss
  batch = {
    "inputs": seq[:, :-1],
    "targets": seq[:, 1:],
    "positions": np.tile(np.arange(16, dtype=np.int32), (4, 1)),
    "segment_ids": np.ones((4, 16), np.int32),
    "loss_mask": np.ones((4, 16), np.float32),
  }
  state = create_state(model_cfg, opt, 0)
  first = None
  for _ in range(150):
    state, m = step(state, batch)
    first = first if first is not None else float(m["loss"])
  assert first > 3.5 and float(m["loss"]) < 0.1, (first, float(m["loss"]))


class PoisonedBatches(SyntheticBatches):
  """Batch `bad` has a NaN in its loss mask, so its loss is not finite."""

  def __init__(self, bad, **kw):
    super().__init__(**kw)
    self.bad = bad

  def batch_at(self, i):
    b = super().batch_at(i)
    if i == self.bad:
      b["loss_mask"] = b["loss_mask"] * np.nan
    return b


def _poisoned_stage(cfg, bad):
  stage = synthetic_stage(cfg)
  stage.train_iter = PoisonedBatches(
    bad, batch_size=cfg.train.batch_size, seq_len=cfg.data.seq_len, vocab_size=cfg.model.vocab_size
  )
  return stage


@pytest.mark.slow
def test_nonfinite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
  cfg = tiny_config(steps=8, checkpoint_every=2, mesh=(1, 1, 1))
  with pytest.raises(NonFiniteLossError, match=r"at step 4 .*data position .*last good checkpoint: step 4"):
    train(cfg, tmp_path, _poisoned_stage(cfg, bad=4))
  ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
  assert ck.latest_step() == 4
  state_tree = ck.manager.restore(
    4,
    args=__import__("orbax.checkpoint").checkpoint.args.Composite(
      state=__import__("orbax.checkpoint").checkpoint.args.StandardRestore()
    ),
  )["state"]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state_tree["params"]))


@pytest.mark.slow
def test_skip_nonfinite_counts_and_continues(tmp_path):
  cfg = tiny_config(steps=6, mesh=(1, 1, 1), skip_nonfinite=True)
  out = train(cfg, tmp_path, _poisoned_stage(cfg, bad=2))
  assert out["skipped_steps"] == 1 and out["step"] == 6
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(out["params"]))


@pytest.mark.slow
def test_nonfinite_guard_keeps_state_only_when_asked():
  """The guard (needed to skip) keeps the old state; unguarded, the NaN reaches it and the loop must stop."""
  cfg = tiny_config(steps=2, mesh=(1, 1, 1))
  model_cfg = ModelConfig.from_dict(cfg.model)
  opt = make_optimizer(cfg.train, jax.eval_shape(lambda: create_state(model_cfg, _Identity(), 0).params))
  bad = {k: jnp.asarray(v) for k, v in PoisonedBatches(0, batch_size=2, seq_len=16, vocab_size=64).batch_at(0).items()}
  leaves = lambda s: jax.tree_util.tree_leaves(s.params)
  for guard in (True, False):
    state = create_state(model_cfg, opt, 0)
    new, m = jax.jit(
      make_train_step(make_objective(cfg), opt, learning_rate_schedule(cfg.train), guard_nonfinite=guard)
    )(state, bad)
    assert not bool(m["finite"]) and int(new.skipped) == 1
    kept = all(bool(jnp.array_equal(a, b)) for a, b in zip(leaves(new), leaves(state)))
    assert kept == guard


@pytest.mark.slow
def test_workdir_with_other_model_is_refused_and_untouched(tmp_path):
  cfg = tiny_config(steps=2, checkpoint_every=2, mesh=(1, 1, 1))
  train(cfg, tmp_path, synthetic_stage(cfg))
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  other = tiny_config("gpt2", steps=4, mesh=(1, 1, 1))
  with pytest.raises(ckpt_lib.CheckpointError, match="different model"):
    train(other, tmp_path, synthetic_stage(other))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_batch_not_divisible_and_mesh_too_large():
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
  with pytest.raises(ValueError, match="not divisible by the data-parallel size 2"):
    mesh_lib.check_batch_divisible(3, mesh)
  with pytest.raises(ValueError, match="needs 16 devices but only"):
    mesh_lib.make_mesh({"data": 16, "fsdp": 1, "tensor": 1})
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    mesh_lib.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})


def test_unknown_config_key_lists_valid_keys(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "modernlm_jax.main",
      "--config=configs/pretrain.py",
      f"--workdir={tmp_path}",
      "--config.train.stepz=3",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "stepz" in proc.stderr and "steps" in proc.stderr  # ml_collections names the closest valid keys

"""train.optimizer=muon: Muon on hidden matrices, AdamW elsewhere; it trains, and checkpoints record it."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from train_utils import tiny_config

from modernlm_jax.model import ModelConfig
from modernlm_jax.train.optim import learning_rate_schedule, make_optimizer, muon_dimensions
from modernlm_jax.train.registry import make_objective
from modernlm_jax.train.step import create_state, make_train_step

REPO = Path(__file__).resolve().parents[1]


class _Identity:
  def init(self, params):
    return ()


def _abstract_params(cfg):
  return jax.eval_shape(lambda: create_state(ModelConfig.from_dict(cfg.model), _Identity(), 0).params)


def test_matrices_get_muon_and_the_rest_adamw():
  params = _abstract_params(tiny_config("modern"))
  kinds = {
    jax.tree_util.keystr(p): muon_dimensions(p, leaf) is not None
    for p, leaf in jax.tree_util.tree_leaves_with_path(params)
  }
  assert kinds["['layer_0']['mixer']['query_kernel']"] and kinds["['layer_1']['mixer']['out_kernel']"]
  assert kinds["['layer_0']['mlp']['wi_gate']['kernel']"] and kinds["['layer_0']['mlp']['wo']['kernel']"]
  assert not kinds["['embed']['embedding']"] and not kinds["['final_norm']['scale']"]
  out = muon_dimensions(
    *next(
      (p, x)
      for p, x in jax.tree_util.tree_leaves_with_path(params)
      if jax.tree_util.keystr(p).endswith("['out_kernel']")
    )
  )
  assert (tuple(np.atleast_1d(out.reduction_axis)), out.output_axis) == ((0, 1), 2)  # [H, Dh] in, D out


def test_unknown_optimizer_is_refused():
  cfg = tiny_config("modern", optimizer="sgd")
  with pytest.raises(ValueError, match="train.optimizer='sgd'"):
    make_optimizer(cfg.train, _abstract_params(cfg))


@pytest.mark.slow
def test_muon_overfits_a_tiny_fixed_batch_and_differs_from_adamw():
  losses = {}
  for name, steps in (("muon", 40), ("adamw", 8)):
    cfg = tiny_config(
      "modern", batch_size=4, lr=1e-2, warmup_steps=5, steps=40, weight_decay=0.0, optimizer=name, muon_lr=0.05
    )
    opt = make_optimizer(cfg.train, _abstract_params(cfg))
    step = jax.jit(make_train_step(make_objective(cfg), opt, learning_rate_schedule(cfg.train)))
    seq = np.random.default_rng(0).integers(0, 64, size=(4, 17)).astype(np.int32)
    batch = {
      "inputs": seq[:, :-1],
      "targets": seq[:, 1:],
      "positions": np.tile(np.arange(16, dtype=np.int32), (4, 1)),
      "segment_ids": np.ones((4, 16), np.int32),
      "loss_mask": np.ones((4, 16), np.float32),
    }
    state = create_state(ModelConfig.from_dict(cfg.model), opt, 0)
    if name == "muon":  # the optimizer state really is a partition with a Muon branch
      assert "muon" in str(jax.tree_util.tree_structure(state.opt_state)).lower() or any(
        isinstance(s, optax.contrib.MuonState)
        for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.MuonState))
      )
    run = []
    for _ in range(steps):
      state, m = step(state, batch)
      run.append(float(m["loss"]))
    losses[name] = run
  assert losses["muon"][0] > 3.5 and losses["muon"][-1] < 0.5 * losses["muon"][0], losses["muon"][::10]
  assert losses["muon"][2:8] != losses["adamw"][2:8]


@pytest.mark.slow
def test_modern_tiny_preset_trains_with_muon_and_the_checkpoint_records_it(tmp_path):
  run = tmp_path / "run"
  cmd = [
    sys.executable,
    "-m",
    "modernlm_jax.main",
    f"--config={REPO}/configs/pretrain.py",
    f"--workdir={run}",
    "--config.train.optimizer=muon",
    "--config.train.steps=30",
    "--config.train.checkpoint_every=30",
    "--config.train.eval_every=30",
    "--config.train.log_every=5",
    "--config.train.batch_size=8",
    "--config.data.seq_len=64",
    "--config.train.eval_batches=1",
    "--config.sample.max_new_tokens=2",
  ]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert res.returncode == 0, res.stderr[-3000:]
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0] - 0.5, losses
  from modernlm_jax.train.checkpoint import Checkpointer

  meta = Checkpointer(run / "checkpoints", async_save=False).read_meta()
  assert meta["config"]["train"]["optimizer"] == "muon"
  assert meta["config"]["train"]["muon_lr"] == 0.02

"""The objective registry: a new objective is its class and one registry entry; the loop asks it the rest."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.data import formats
from modernlm_jax.data.posttrain_pipeline import batch_from_examples
from modernlm_jax.data.tokenizers import ByteTokenizer
from modernlm_jax.train import registry
from modernlm_jax.train.dpo import DPOObjective, side
from modernlm_jax.train.loop import StageData, train
from tests.train_utils import tiny_config


@dataclasses.dataclass(frozen=True)
class LengthNormalisedDPO(DPOObjective):
  """A toy variant (as in SimPO/R-DPO): each side's summed log-prob divided by its response length."""

  name: str = "dpo_norm"

  def _both_logps(self, params, batch):
    chosen, rejected = super()._both_logps(params, batch)
    n_c = jnp.maximum(jnp.sum(side(batch, "chosen")["loss_mask"], axis=-1), 1.0)
    n_r = jnp.maximum(jnp.sum(side(batch, "rejected")["loss_mask"], axis=-1), 1.0)
    return chosen / n_c, rejected / n_r


@pytest.fixture
def dpo_norm_registered():
  registry.register_objective(
    "dpo_norm",
    lambda config, model_cfg: LengthNormalisedDPO(
      model_cfg, beta=float(config.dpo.beta), loss_chunk=int(config.train.loss_chunk)
    ),
  )
  yield
  registry.OBJECTIVES.pop("dpo_norm")


class FixedPairs:
  """A step-indexed iterator that repeats one preference batch."""

  def __init__(self, batch):
    self.batch, self.step = batch, 0

  def __next__(self):
    self.step += 1
    return self.batch

  def get_state(self):
    return {"step": self.step}

  def set_state(self, state):
    self.step = int(state["step"])


class ByteIdentity(ByteTokenizer):
  identity = "bytes-test"


def pair_batch(n=4, seq_len=24):
  rng = np.random.default_rng(0)
  word = lambda k: "".join(rng.choice(list("abcdefgh"), size=k))
  examples = [formats.PreferenceExample(f"Q{word(3)}:", word(4), word(9), f"t:{i}") for i in range(n)]
  encoded = formats.encode_preferences(examples, ByteTokenizer(), seq_len, formats.Truncation())
  return batch_from_examples(encoded, "dpo", seq_len, 256)


def test_unknown_objective_lists_the_registered_ones():
  cfg = tiny_config()
  cfg.objective = "orpo"
  with pytest.raises(ValueError, match=r"objective='orpo' is not valid; choose one of \['dpo', 'next_token', 'sft'\]"):
    registry.make_objective(cfg)


def test_builtin_objectives_declare_their_contract():
  cfg = tiny_config()
  kinds = {}
  for name in ("next_token", "sft", "dpo"):
    cfg.objective = name
    obj = registry.make_objective(cfg)
    kinds[name] = (obj.name, obj.batch_kind, obj.needs_reference, obj.reports_perplexity)
  assert kinds == {
    "next_token": ("next_token", "tokens", False, True),
    "sft": ("sft", "tokens", False, True),
    "dpo": ("dpo", "pairs", True, False),
  }


@pytest.mark.slow
def test_a_toy_objective_needs_only_its_class_and_a_registry_entry(dpo_norm_registered, tmp_path):
  cfg = tiny_config(steps=3, batch_size=8, seq_len=24)
  cfg.model.update(dict(vocab_size=264, max_len=32))
  cfg.objective = "dpo_norm"
  obj = registry.make_objective(cfg)
  assert isinstance(obj, LengthNormalisedDPO) and obj.needs_reference and obj.batch_kind == "pairs"
  batch = pair_batch(8)
  stage = StageData(train_iter=FixedPairs(batch), eval_batches=[batch], tokenizer=ByteIdentity())
  final = train(cfg, tmp_path, stage)
  # The loop kept a frozen reference (the policy starts equal to it: every pair a tie), asked the objective
  # for no perplexity, and trained: the policy moved away from the reference.
  assert "val_ppl" not in final and "val_reward_accuracy" in final
  assert final["step"] == 3 and np.isfinite(final["loss"])
  ref_logps = obj._both_logps(final["params"], jax.tree_util.tree_map(jnp.asarray, batch))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in ref_logps)
  assert final["val_logratio"] != 0.0

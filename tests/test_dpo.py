"""DPO objective: the loss against hand-computed values, summed response log-probs, the reference, overfitting."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from modernlm_jax.data import formats
from modernlm_jax.data.posttrain_pipeline import batch_from_examples
from modernlm_jax.data.tokenizers import ByteTokenizer
from modernlm_jax.model import LanguageModel, ModelConfig, init_params
from modernlm_jax.train.dpo import DPOObjective, dpo_terms, real_pairs, response_logps
from modernlm_jax.train.optim import learning_rate_schedule, make_optimizer
from modernlm_jax.train.registry import make_objective
from modernlm_jax.train.step import TrainState, create_state, make_train_step
from tests.train_utils import tiny_config

BYTE_MODEL = dict(vocab_size=264, max_len=48)  # room for the byte tokenizer's 257 ids


def byte_config(**train):
  cfg = tiny_config("modern", **train)
  cfg.model.update(BYTE_MODEL)
  cfg.objective = "dpo"
  return cfg


def random_pairs(n, seed=0, seq_len=40):
  """Distinct random prompts/responses: only memorising each pair can order its rewards."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghijklmnop"))
  word = lambda k: "".join(rng.choice(letters, size=k))
  examples = [formats.PreferenceExample(f"Q{word(6)}:", word(8), word(8), f"gen:{i}") for i in range(n)]
  return formats.encode_preferences(examples, ByteTokenizer(), seq_len, formats.Truncation())


def test_dpo_loss_matches_hand_computation():
  # log π: chosen -1.0, rejected -2.0; log π_ref: chosen -1.5, rejected -1.0; β = 0.1
  # h = (-1.0 + 1.5) - (-2.0 + 1.0) = 1.5; loss = -log σ(0.15) = log(1 + e^-0.15) = 0.620957...
  t = dpo_terms(jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.0]), beta=0.1)
  np.testing.assert_allclose(float(t["loss"][0]), 0.6209570, rtol=1e-6)
  np.testing.assert_allclose(float(t["loss"][0]), math.log1p(math.exp(-0.15)), rtol=1e-6)
  np.testing.assert_allclose(float(t["chosen_reward"][0]), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(t["rejected_reward"][0]), -0.1, rtol=1e-6)
  np.testing.assert_allclose(float(t["reward_margin"][0]), 0.15, rtol=1e-6)
  np.testing.assert_allclose(float(t["logratio"][0]), -0.25, rtol=1e-6)
  assert float(t["reward_accuracy"][0]) == 1.0


def test_reward_accuracy_counts_ties_as_half():
  t = dpo_terms(jnp.array([-1.0, -3.0, -2.0]), jnp.array([-2.0, -1.0, -2.0]), jnp.zeros(3), jnp.zeros(3), beta=1.0)
  np.testing.assert_array_equal(np.asarray(t["reward_accuracy"]), [1.0, 0.0, 0.5])


@pytest.fixture(scope="module")
def tiny_model():
  cfg = byte_config()
  model_cfg = ModelConfig.from_dict(cfg.model)
  return model_cfg, init_params(model_cfg, 0)


@functools.lru_cache(maxsize=1)
def logps_case():
  """(model_cfg, params, batch, expected per-row sums) with the expectation from full logits."""
  model_cfg = ModelConfig.from_dict(byte_config().model)
  params = init_params(model_cfg, 0)
  batch = {
    k[len("chosen_") :]: v
    for k, v in batch_from_examples(random_pairs(3), "dpo", 40, 256).items()
    if k.startswith("chosen_")
  }
  logits = jax.jit(
    lambda p, b: LanguageModel(model_cfg).apply(
      {"params": p}, b["inputs"], positions=b["positions"], segment_ids=b["segment_ids"]
    )
  )(params, batch)
  logp_all = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
  expected = np.zeros(3)
  for r in range(3):
    for t in np.flatnonzero(batch["loss_mask"][r]):
      expected[r] += logp_all[r, t, batch["targets"][r, t]]
  return model_cfg, params, batch, expected


@pytest.mark.slow
class ResponseLogpsTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0, 8)
  def test_equal_sum_over_masked_positions(self, chunk):
    model_cfg, params, batch, expected = logps_case()
    logps = np.asarray(self.variant(lambda p, b: response_logps(p, model_cfg, b, loss_chunk=chunk))(params, batch))
    chex.assert_shape(logps, (3,))
    np.testing.assert_allclose(logps, expected, rtol=1e-5, atol=1e-4)


def test_identical_policy_and_reference_give_log2_and_padding_does_not_count(tiny_model):
  model_cfg, params = tiny_model
  pairs = random_pairs(3)
  batch = batch_from_examples(pairs, "dpo", 40, 256)
  padded = {k: np.concatenate([v, np.zeros((2,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  obj = DPOObjective(model_cfg, beta=0.1)
  np.testing.assert_array_equal(np.asarray(real_pairs(padded)), [1, 1, 1, 0, 0])
  assert float(obj.weight(padded)) == 3.0
  total, sums = jax.jit(lambda p, b: obj.loss_sums(p, b, None, p))(params, padded)
  np.testing.assert_allclose(float(total), 3 * math.log(2.0), rtol=1e-5)
  np.testing.assert_allclose(float(sums["reward_accuracy"]), 1.5)
  np.testing.assert_allclose(float(sums["reward_margin"]), 0.0, atol=1e-6)


@pytest.mark.slow
def test_reference_gets_no_gradient_and_policy_does(tiny_model):
  model_cfg, params = tiny_model
  batch = batch_from_examples(random_pairs(2), "dpo", 40, 256)
  obj = DPOObjective(model_cfg, beta=0.5)
  other = jax.tree_util.tree_map(lambda x: x * 0.9, params)
  loss = lambda p, ref: obj.loss_sums(p, batch, None, ref)[0]
  g_pol, g_ref = jax.jit(jax.grad(loss, argnums=(0, 1)))(other, params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(g_ref))
  assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(g_pol)) > 0.0


def test_missing_reference_is_a_clear_error(tiny_model):
  model_cfg, params = tiny_model
  batch = batch_from_examples(random_pairs(1), "dpo", 40, 256)
  with pytest.raises(ValueError, match="ref_params"):
    DPOObjective(model_cfg).loss_sums(params, batch, None)


@pytest.mark.slow
def test_dpo_overfits_64_pairs_reward_accuracy_from_half_to_95_percent():
  cfg = byte_config(batch_size=64, lr=1e-2, warmup_steps=5, steps=20, weight_decay=0.0, grad_clip=1.0)
  cfg.dpo.beta = 0.5
  model_cfg = ModelConfig.from_dict(cfg.model)
  batch = batch_from_examples(random_pairs(64, seed=1), "dpo", 40, 256)
  opt = make_optimizer(cfg.train, jax.eval_shape(lambda: init_params(model_cfg, 0)))
  step = jax.jit(make_train_step(make_objective(cfg), opt, learning_rate_schedule(cfg.train)))
  state: TrainState = create_state(model_cfg, opt, 0, with_reference=True)
  accuracies = []
  for _ in range(int(cfg.train.steps)):
    state, m = step(state, batch)
    accuracies.append(float(m["reward_accuracy"]))
  # Step 1 is measured before any update (policy == reference): every pair is a tie.
  assert abs(accuracies[0] - 0.5) < 0.05, accuracies[:3]
  assert accuracies[-1] >= 0.95, accuracies[-5:]
  assert float(m["loss"]) < math.log(2.0)


def test_validation_reports_perplexity_only_for_token_losses():
  from modernlm_jax.train.dpo import DPOObjective
  from modernlm_jax.train.loop import evaluate

  fake_step = lambda params, batch, ref: (
    {"loss": jnp.float32(2.0 * batch), "accuracy": jnp.float32(batch)},
    jnp.float32(batch),
  )
  token = evaluate(fake_step, None, [1.0, 3.0])
  assert token["val_loss"] == pytest.approx(2.0) and token["val_ppl"] == pytest.approx(np.exp(2.0))
  pairs = evaluate(fake_step, None, [1.0, 3.0], reports_perplexity=DPOObjective.reports_perplexity)
  assert "val_ppl" not in pairs and pairs["val_accuracy"] == pytest.approx(1.0)

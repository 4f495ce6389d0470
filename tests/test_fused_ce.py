"""Fused linear cross-entropy == the plain formula (value and gradients), for every chunking and padding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from modernlm_jax.train.fused_ce import VOCAB_ALIGN, fused_cross_entropy, masked_logits, pad_vocab


def _inputs(N=37, D=16, V=203, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  h = jax.random.normal(k[0], (N, D))
  w = jax.random.normal(k[1], (D, V)) * 0.3
  t = jax.random.randint(k[2], (N,), 0, V)
  m = jax.random.uniform(k[3], (N,)) > 0.3  # boolean mask, as batches carry it
  return h, w, t, m


def _plain(h, w, t, m, z_coef):
  logits = h @ w
  lse = jax.nn.logsumexp(logits, -1)
  nll = lse - jnp.take_along_axis(logits, t[:, None], -1)[:, 0]
  mf = m.astype(jnp.float32)
  return jnp.sum(mf * nll) + z_coef * jnp.sum(mf * lse**2)


@pytest.mark.slow
class FusedCrossEntropyTest(chex.TestCase, parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((0, 0.0), (8, 0.0), (36, 1e-2), (64, 1e-2))  # one chunk, 5 chunks (+pad), 2, 1
  def test_value_and_gradients_match_plain_formula(self, chunk, z_coef):
    h, w, t, m = _inputs()
    fused = self.variant(jax.value_and_grad(lambda h, w: fused_cross_entropy(h, w, t, m, chunk, z_coef)[0], (0, 1)))
    plain = jax.value_and_grad(lambda h, w: _plain(h, w, t, m, z_coef), (0, 1))
    chex.assert_trees_all_close(fused(h, w), plain(h, w), rtol=2e-5, atol=2e-5)

  def test_metric_outputs_are_the_nll_and_z_sums(self):
    h, w, t, m = _inputs()
    total, nll, z = fused_cross_entropy(h, w, t, m, 8, 0.5)
    chex.assert_trees_all_close(nll, _plain(h, w, t, m, 0.0), rtol=1e-5)
    chex.assert_trees_all_close(total, nll + 0.5 * z, rtol=1e-6)

  @pytest.mark.slow
  def test_gradient_scales_with_the_cotangent_and_masked_tokens_get_none(self):
    h, w, t, m = _inputs()
    g1 = jax.grad(lambda h: fused_cross_entropy(h, w, t, m, 8)[0])(h)
    g3 = jax.grad(lambda h: 3.0 * fused_cross_entropy(h, w, t, m, 8)[0])(h)
    chex.assert_trees_all_close(g3, 3.0 * g1, rtol=1e-5)
    assert bool(jnp.all(g1[~m] == 0)) and bool(jnp.any(g1[m] != 0))

  @pytest.mark.slow
  def test_bf16_hidden_states_give_bf16_gradients_close_to_float32(self):
    h, w, t, m = _inputs()
    g16 = jax.grad(lambda h: fused_cross_entropy(h, w, t, m, 8)[0])(h.astype(jnp.bfloat16))
    chex.assert_type(g16, jnp.bfloat16)
    g32 = jax.grad(lambda h: _plain(h, w, t, m, 0.0))(h)
    np.testing.assert_allclose(np.asarray(g16, np.float32), np.asarray(g32), atol=3e-2)


def test_vocab_padding_is_invisible_to_the_softmax():
  h, w, _, _ = _inputs(V=203)
  w_pad, V = pad_vocab(w, jnp.float32)
  assert V == 203 and w_pad.shape[-1] % VOCAB_ALIGN == 0 and w_pad.shape[-1] >= V
  logits = masked_logits(h, w_pad, V)
  chex.assert_shape(logits, (h.shape[0], w_pad.shape[-1]))
  assert bool(jnp.all(jnp.isneginf(logits[:, V:])))
  chex.assert_trees_all_close(jax.nn.logsumexp(logits, -1), jax.nn.logsumexp(h @ w, -1), rtol=1e-6)

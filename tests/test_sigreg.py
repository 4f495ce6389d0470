"""SIGReg (LeJEPA's Epps–Pulley regulariser, real part): it must see collapse, anisotropy and scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.train.objectives import sigreg_real

N, D = 4096, 16
KEY = jax.random.key(0)


def _standardising_sigreg(h_ND, rng, num_directions=64, num_points=17, t_max=4.0):
  """The variant this codebase used before: every projection standardised (blind to collapse and scale)."""
  dirs = jax.random.normal(rng, (h_ND.shape[-1], num_directions))
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
  z = h_ND @ dirs
  z = (z - z.mean(0)) / (z.std(0) + 1e-6)
  t = jnp.linspace(-t_max, t_max, num_points)
  ecf = jnp.mean(jnp.cos(t[:, None, None] * z[None]), axis=1)
  g = jnp.exp(-0.5 * t**2)[:, None]
  return jnp.mean(jnp.trapezoid((ecf - g) ** 2 * g, t, axis=0))


def _samples() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  iso = rng.standard_normal((N, D))
  rank2 = rng.standard_normal((N, 2)) @ np.linalg.qr(rng.standard_normal((D, 2)))[0].T  # unit variance in a plane
  aniso = iso * np.sqrt(np.geomspace(1e-3, 1.0, D))  # variances 1e-3 .. 1: a 1000x anisotropy
  scaled = 3.0 * iso
  centre = np.zeros(D)
  centre[0] = 2.0
  labels = rng.integers(0, 2, N)[:, None]
  clusters = 0.3 * iso + np.where(labels, centre, -centre)  # two tight clusters
  return {"isotropic": iso, "rank2": rank2, "anisotropic": aniso, "scaled": scaled, "two_clusters": clusters}


@pytest.fixture(scope="module")
def scores():
  fn = jax.jit(sigreg_real)
  old = jax.jit(_standardising_sigreg)
  return {
    name: (float(fn(jnp.asarray(x, jnp.float32), KEY)), float(old(jnp.asarray(x, jnp.float32), KEY)))
    for name, x in _samples().items()
  }


def test_isotropic_gaussian_scores_near_zero(scores):
  assert scores["isotropic"][0] < 2e-4


@pytest.mark.parametrize("name", ["rank2", "anisotropic", "scaled", "two_clusters"])
def test_non_gaussian_embeddings_score_clearly_higher(scores, name):
  assert scores[name][0] > 20 * max(scores["isotropic"][0], 1e-6), scores
  assert scores[name][0] > 1e-2, scores


@pytest.mark.parametrize("name", ["rank2", "anisotropic", "scaled"])
def test_the_old_standardising_variant_is_blind_to_collapse_and_scale(scores, name):
  # What made the old function wrong: it scores these like the isotropic sample.
  assert scores[name][1] < 5 * max(scores["isotropic"][1], 1e-5), scores


@pytest.mark.slow
def test_gradient_moves_a_collapsed_sample_toward_isotropy():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1024, 1)) @ rng.standard_normal((1, 8)) / np.sqrt(8) + 0.05 * rng.standard_normal((1024, 8))
  x = jnp.asarray(x, jnp.float32)
  grad = jax.jit(jax.grad(sigreg_real))

  def smallest_eig(h):
    return float(np.linalg.eigvalsh(np.cov(np.asarray(h).T))[0])

  before, start_penalty = smallest_eig(x), float(sigreg_real(x, KEY))
  for i in range(200):
    x = x - 2000.0 * grad(x, jax.random.key(i))  # the penalty is a mean over N, so its gradient is O(1/N)
  assert smallest_eig(x) > 10 * before, (before, smallest_eig(x))
  assert float(sigreg_real(x, KEY)) < 0.2 * start_penalty

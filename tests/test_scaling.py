"""Scaling-law fit L(N) = a·N^(−b) + c and context growth exponents, on synthetic points."""

from __future__ import annotations

import numpy as np
import pytest

from modernlm_jax.compare import scaling

N5 = np.array([3.5e6, 8e6, 30e6, 125e6, 350e6])
A, B, C = 400.0, 0.3, 1.8


def _law(n, a=A, b=B, c=C):
  return a * np.asarray(n) ** (-b) + c


@pytest.mark.parametrize("n_points", [3, 4, 5])
def test_recovers_exact_parameters(n_points):
  n = N5[:n_points]
  fit = scaling.fit_power_law(n, _law(n))
  assert fit["kind"] == "power_law_with_offset"
  assert fit["a"] == pytest.approx(A, rel=1e-4)
  assert fit["b"] == pytest.approx(B, rel=1e-4)
  assert fit["c"] == pytest.approx(C, rel=1e-4)
  assert fit["rms_residual"] < 1e-8


def test_recovers_parameters_under_small_noise():
  rng = np.random.default_rng(0)
  for _ in range(5):
    y = _law(N5) * (1 + 0.002 * rng.standard_normal(N5.size))
    fit = scaling.fit_power_law(N5, y)
    assert fit["b"] == pytest.approx(B, rel=0.1)
    assert fit["c"] == pytest.approx(C, rel=0.1)
    # The fit explains the data to the noise level.
    assert fit["rms_residual"] < 0.02
    np.testing.assert_allclose(scaling.predict(fit, N5), _law(N5), rtol=0.01)


def test_seed_repeats_are_fitted_jointly():
  n = np.repeat(N5, 3)
  y = _law(n) + np.tile([-0.01, 0.0, 0.01], N5.size)
  fit = scaling.fit_power_law(n, y)
  assert fit["n_points"] == 15 and fit["n_scales"] == 5
  assert fit["b"] == pytest.approx(B, rel=0.05)


def test_two_scales_fit_pure_power_law():
  n = N5[:2]
  y = 20.0 * n**-0.1
  fit = scaling.fit_power_law(n, y)
  assert fit["kind"] == "pure_power_law" and fit["c"] == 0.0
  assert "c = 0" in fit["note"]
  assert fit["a"] == pytest.approx(20.0, rel=1e-9)
  assert fit["b"] == pytest.approx(0.1, rel=1e-9)


def test_no_offset_detected():
  y = 5.0 * N5**-0.1
  fit = scaling.fit_power_law(N5, y)
  assert fit["c"] == pytest.approx(0.0, abs=1e-6)
  assert fit["b"] == pytest.approx(0.1, rel=1e-4)


def test_bad_inputs_name_the_fix():
  with pytest.raises(ValueError, match="at least 2 distinct"):
    scaling.fit_power_law([8e6, 8e6], [3.0, 3.1])
  with pytest.raises(ValueError, match="non-finite"):
    scaling.fit_power_law([1e6, 2e6], [3.0, float("nan")])
  with pytest.raises(ValueError, match="equally long"):
    scaling.fit_power_law([1e6, 2e6], [3.0])


@pytest.mark.parametrize("power, label", [(1.0, "linear"), (2.0, "quadratic")])
def test_growth_exponent_of_synthetic_timings(power, label):
  lengths = np.array([256, 512, 1024, 2048])
  times = 1e-3 * (lengths / 256.0) ** power
  out = scaling.growth_exponent(lengths, times)
  assert out["exponent"] == pytest.approx(power, abs=1e-9)
  assert out["label"] == label and out["r2"] == pytest.approx(1.0)


def test_growth_exponent_with_overhead_and_noise():
  rng = np.random.default_rng(1)
  lengths = np.array([256, 512, 1024, 2048, 4096])
  times = (1e-7 * lengths**2) * (1 + 0.03 * rng.standard_normal(lengths.size))
  out = scaling.growth_exponent(lengths, times)
  assert 1.9 < out["exponent"] < 2.1
  flat = scaling.growth_exponent(lengths, 5e-3 + 1e-9 * lengths)  # overhead dominated
  assert flat["label"] == "sub-linear (overhead dominated)"
  with pytest.raises(ValueError, match="2 distinct context lengths"):
    scaling.growth_exponent([256, 256], [1.0, 2.0])

"""Timing harness on tiny callables: structure and sane values, never timing thresholds."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.eval import inference_protocol as ip

D = 16


def _linear_prefill(x_T):
  return jnp.cumsum(x_T * 2.0)


def _quadratic_prefill(x_TD):
  # Attention-like: the [T, T] score matrix makes memory and work grow with T².
  return jax.nn.softmax(x_TD @ x_TD.T, axis=-1) @ x_TD


class TestPrefill(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_structure_and_order(self):
    calls = []

    def fn(x):
      calls.append(1)
      return x * 2.0

    f = self.variant(fn)
    out = ip.measure_prefill(f, jnp.ones((1, 64)), repeats=5)
    for key in ("median_s", "mean_s", "p10_s", "p90_s", "min_s", "first_call_s", "tokens_per_s"):
      assert out[key] > 0 and math.isfinite(out[key]), key
    assert out["min_s"] <= out["p10_s"] <= out["median_s"] <= out["p90_s"]
    assert out["repeats"] == 5 and out["n_tokens"] == 64
    assert calls  # traced (jit) or called (no jit) at least once

  def test_first_call_is_excluded_from_samples(self):
    n = {"calls": 0}

    def fn(x):
      n["calls"] += 1
      return x

    ip.measure_prefill(fn, np.ones(4), repeats=3)
    assert n["calls"] == 4  # 1 compile/warm-up + 3 timed

  def test_rejects_bad_repeats(self):
    with pytest.raises(ValueError, match="positive integer"):
      ip.measure_prefill(lambda x: x, np.ones(2), repeats=0)


def test_measure_decode_counts_steps_and_copies_state():
  calls = {"n": 0}

  @jax.jit
  def step(state):
    return {"h": state["h"] + 1.0, "pos": state["pos"] + 1}

  def counted(state):
    calls["n"] += 1
    return step(state)

  state = {"h": jnp.zeros((1, D)), "pos": jnp.zeros((), jnp.int32)}
  out = ip.measure_decode(counted, state, n_tokens=8, repeats=3)
  assert calls["n"] == 1 + 8 * 3
  assert out["tokens_per_s"] > 0 and out["s_per_token"] == pytest.approx(1 / out["tokens_per_s"])
  assert out["tokens_per_s_p10"] <= out["tokens_per_s"] <= out["tokens_per_s_p90"]
  chex.assert_trees_all_close(state, {"h": jnp.zeros((1, D)), "pos": jnp.zeros((), jnp.int32)})


def test_measure_decode_survives_donated_state():
  step = jax.jit(lambda s: s + 1.0, donate_argnums=0)
  out = ip.measure_decode(step, jnp.zeros((4,)), n_tokens=4, repeats=2)
  assert out["n_tokens"] == 4 and out["tokens_per_s"] > 0


def test_peak_memory_on_cpu_is_labelled_rss():
  out = ip.peak_memory_bytes()
  if jax.devices()[0].platform == "cpu":
    assert out["mem_kind"] == "process_peak_rss"
    assert out["peak_mem_bytes"] > 10 * 2**20  # a Python process with jax loaded
  else:
    assert out["mem_kind"] == "device_peak_bytes_in_use"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_child_process_peak_is_its_own_not_the_parents():
  # Linux carries ru_maxrss across fork and exec: a child of a large parent used to report the parent's peak.
  big = np.ones(400 * 2**20 // 8)  # 400 MiB resident in this (parent) process
  code = "from modernlm_jax.eval import inference_protocol as ip; print(ip._process_peak_rss_bytes())"
  child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
  assert big.sum() > 0 and ip._process_peak_rss_bytes() > 400 * 2**20
  assert child < ip._process_peak_rss_bytes() - 300 * 2**20, (child, ip._process_peak_rss_bytes())


def test_peak_memory_reads_device_allocator():
  class FakeDevice:
    platform, id = "gpu", 0

    def memory_stats(self):
      return {"peak_bytes_in_use": 123_456, "bytes_in_use": 1}

  assert ip.peak_memory_bytes(FakeDevice()) == {
    "peak_mem_bytes": 123_456,
    "mem_kind": "device_peak_bytes_in_use",
    "device": "gpu:0",
  }


def test_context_scaling_structure_and_memory_growth():
  lengths = [64, 128, 256]

  def quad_factory(t):
    return jax.jit(_quadratic_prefill), jnp.ones((t, D), jnp.float32)

  def lin_factory(t):
    return jax.jit(_linear_prefill), jnp.ones((t,), jnp.float32)

  quad = ip.context_scaling(quad_factory, lengths, repeats=2)
  lin = ip.context_scaling(lin_factory, lengths, repeats=2)
  for out in (quad, lin):
    assert out["lengths"] == lengths and len(out["times"]) == 3
    assert all(t > 0 for t in out["times"])
    assert math.isfinite(out["exponent"]) and out["label"] in {
      "sub-linear (overhead dominated)",
      "linear",
      "quadratic",
      "super-quadratic",
    }
    assert out["mem_kind"] == "compiled_footprint"
  # Compiled memory is deterministic, unlike time, so its growth can be asserted.
  assert quad["mem_exponent"] > 1.5
  assert 0.5 < lin["mem_exponent"] < 1.5


def test_context_scaling_without_jit_has_no_memory():
  out = ip.context_scaling(lambda t: (_linear_prefill, jnp.ones((t,))), [32, 64], repeats=1)
  assert out["mem_bytes"] == [None, None] and out["mem_kind"] is None and out["mem_exponent"] is None
  with pytest.raises(ValueError, match="2 distinct lengths"):
    ip.context_scaling(lambda t: (_linear_prefill, jnp.ones((t,))), [32], repeats=1)


def test_compute_efficiency_ratio():
  # The protocol's arithmetic: 2.8 / 0.1 s = 28.
  assert ip.compute_efficiency_ratio(2.8, 0.1) == pytest.approx(28.0)
  # With a higher-is-better quality the protocol's example still favours the faster model ...
  gpt2 = ip.compute_efficiency_ratio(ip.quality_from_ppl(2.8), 0.100)
  ours = ip.compute_efficiency_ratio(ip.quality_from_ppl(3.0), 0.040)
  assert gpt2 == pytest.approx(1 / 0.28) and ours == pytest.approx(1 / 0.12)
  # ... but, unlike dividing perplexity itself, a worse model at equal time scores lower.
  assert ip.compute_efficiency_ratio(ip.quality_from_ppl(3.0), 0.1) < gpt2
  with pytest.raises(ValueError, match="positive"):
    ip.compute_efficiency_ratio(1.0, 0.0)
  with pytest.raises(ValueError, match="positive"):
    ip.quality_from_ppl(0.0)

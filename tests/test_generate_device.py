"""The on-device generation path: one jitted call (prefill + sampling loop), argmax-only greedy decoding,
one prefill chunk for a linear cache, chunks under lax.scan for a streaming cache; same tokens as the
host-driven path (`prefill` + `_decode_loop`)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import numpy_init

from modernlm_jax import generate as gen
from modernlm_jax.model import ModelConfig, init_cache

CFG = ModelConfig(
  vocab_size=64,
  max_len=48,
  n_layers=2,
  d_model=32,
  n_heads=4,
  d_ff=64,
  init_std=0.1,
  family="modern",
  positions="rope",
  norm="rmsnorm",
  mlp="swiglu",
  use_bias=False,
)
PROMPTS = [[5, 9, 17, 3, 22, 41, 8, 1, 2, 3, 4], [33, 2, 60]]


def _host_driven(params, cfg, prompts, n, chunk, stream_sinks=None, cache_len=None, **sampling):
  cache_len = cache_len or min(cfg.max_len, max(map(len, prompts)) + n)
  cache = init_cache(cfg, len(prompts), cache_len)
  last, cache, next_pos = gen.prefill(params, cfg, cache, prompts, chunk=chunk, stream_sinks=stream_sinks)
  s = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, **sampling}
  out, _ = gen._decode_loop(
    params,
    cache,
    last,
    next_pos,
    jnp.asarray([-2], jnp.int32),
    jax.random.key(s["seed"]),
    jnp.float32(s["temperature"]),
    jnp.int32(s["top_k"]),
    jnp.float32(s["top_p"]),
    cfg=cfg,
    stream_sinks=stream_sinks,
    max_new_tokens=n,
  )
  return [row[row >= 0].tolist() for row in np.asarray(out)]


@pytest.fixture(scope="module")
def params():
  return numpy_init(CFG, std=CFG.init_std)


@pytest.mark.slow
def test_one_call_matches_host_driven_greedy_and_sampling(params):
  assert gen.generate(params, CFG, PROMPTS, max_new_tokens=6, prefill_chunk=4) == _host_driven(
    params, CFG, PROMPTS, 6, 4
  )
  sampled = gen.generate(params, CFG, PROMPTS, max_new_tokens=6, temperature=0.8, top_k=10, top_p=0.9, seed=3)
  assert sampled == _host_driven(params, CFG, PROMPTS, 6, 64, temperature=0.8, top_k=10, top_p=0.9, seed=3)


@pytest.mark.slow
def test_streaming_prefill_in_scanned_chunks_matches_host_driven(params):
  long_prompt = [list(np.arange(30) % 60 + 1)]
  out = gen.generate(params, CFG, long_prompt, max_new_tokens=8, stream_sinks=2, cache_len=16, prefill_chunk=4)
  assert out == _host_driven(params, CFG, long_prompt, 8, 4, stream_sinks=2, cache_len=16)


def test_greedy_program_has_no_sort_and_one_prefill_chunk(params):
  toks = jnp.zeros((1, 1, 64), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(64, dtype=jnp.int32), (1, 1, 64))
  args = (
    params,
    toks,
    pos,
    jnp.asarray([64], jnp.int32),
    jnp.asarray([-2], jnp.int32),
    jax.random.key(0),
    jnp.float32(0),
    jnp.int32(0),
    jnp.float32(1),
  )
  cfg = CFG.replace(max_len=128)

  def hlo(greedy):
    return gen._generate_on_device.lower(
      *args, cfg=cfg, stream_sinks=None, max_new_tokens=4, greedy=greedy, cache_len=72
    ).as_text()

  assert not re.search(r"\bsort\b", hlo(True))  # greedy: argmax only
  assert re.search(r"\bsort\b", hlo(False))  # sampling keeps the top-k / top-p filter

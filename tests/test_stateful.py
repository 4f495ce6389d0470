"""StatefulSession: turn-by-turn feeding equals one full forward pass, generation continues the carried state,
one compilation per shape, and the attention bound is enforced while recurrent families have none."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.model import LanguageModel, ModelConfig, init_params
from modernlm_jax.stateful import StatefulSession

VOCAB = 53


@functools.lru_cache(maxsize=None)
def model(kind: str):
  pattern = {"hybrid": ("ssm", "rwkv"), "attn": ("attn", "attn")}[kind]
  cfg = ModelConfig(
    vocab_size=VOCAB,
    max_len=48,
    n_layers=2,
    d_model=32,
    n_heads=4,
    d_ff=48,
    norm="rmsnorm",
    mlp="swiglu",
    use_bias=False,
    ssm_state=8,
    layer_pattern=pattern,
    positions="none" if kind == "hybrid" else "rope",
  )
  params = jax.jit(lambda: init_params(cfg, jax.random.key(0, impl="rbg")))()
  rng = np.random.default_rng(1)  # random weights on top of init, so the state matters for every output
  params = jax.tree.map(lambda p: p + 0.2 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  forward = jax.jit(lambda p, t: LanguageModel(cfg).apply({"params": p}, t))
  return cfg, params, forward


def turns(seed, lengths):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(0, VOCAB, n)) for n in lengths]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hybrid", "attn"])
def test_turn_by_turn_equals_full_forward_and_compiles_once(kind):
  cfg, params, forward = model(kind)
  session = StatefulSession(cfg, params, chunk_size=8)
  traces_before = session.traces
  conversation = turns(2, [5, 19, 1, 8])  # shorter, longer than, and equal to the chunk
  full = np.asarray(forward(params, jnp.asarray([sum(conversation, [])], jnp.int32))[0])
  end = 0
  for turn in conversation:
    logits = session.feed(turn)
    end += len(turn)
    chex.assert_trees_all_close(logits, full[end - 1], atol=1e-4, rtol=1e-4)  # causal: prefix logits = turn's
  assert session.position == end
  assert session.traces - traces_before <= 1  # one compiled chunk step for every turn length


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hybrid", "attn"])
def test_generate_continues_the_carried_state(kind):
  cfg, params, forward = model(kind)
  session = StatefulSession(cfg, params, chunk_size=8)
  prompt, follow_up = turns(3, [6, 3])
  session.feed(prompt)
  reply = session.generate(5)
  logits = session.feed(follow_up)  # the reply is part of the state now
  full = np.asarray(forward(params, jnp.asarray([prompt + reply + follow_up], jnp.int32))[0])
  # Greedy: each reply token is the argmax after the history before it.
  assert reply == [int(np.argmax(full[len(prompt) - 1 + i])) for i in range(5)]
  chex.assert_trees_all_close(logits, full[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_sampling_stops_and_snapshots_branch_the_conversation():
  cfg, params, _ = model("hybrid")
  session = StatefulSession(cfg, params, chunk_size=8)
  session.feed(turns(5, [4])[0])
  snap = session.snapshot()
  a = session.generate(6, temperature=1.0, top_k=5, seed=7)
  session.restore(snap)
  b = session.generate(6, temperature=1.0, top_k=5, seed=7)
  assert a == b and all(0 <= t < VOCAB for t in a)
  session.restore(snap)
  stopped = session.generate(6, temperature=1.0, top_k=5, seed=7, stop_ids=(a[1],))
  assert stopped == a[: a.index(a[1]) + 1]


def test_attention_families_are_bounded_recurrent_ones_are_not():
  cfg, params, _ = model("attn")
  session = StatefulSession(cfg, params, chunk_size=8, max_len=16)
  session.feed(list(range(10)))
  with pytest.raises(ValueError, match="max_len=16"):
    session.feed(list(range(10)))
  cfg_h, params_h, _ = model("hybrid")
  long_session = StatefulSession(cfg_h, params_h, chunk_size=8)
  for turn in turns(6, [40, 40]):  # past cfg.max_len (48): the state is fixed-size
    logits = long_session.feed(turn)
  assert long_session.position == 80 and np.all(np.isfinite(logits))


def test_text_needs_a_tokenizer_and_bad_ids_are_rejected():
  cfg, params, _ = model("hybrid")

  class CharTokenizer:
    def encode(self, text):
      return [ord(c) % VOCAB for c in text]

    def decode(self, ids):
      return "".join(chr(97 + i % 26) for i in ids)

  session = StatefulSession(cfg, params, chunk_size=8)
  with pytest.raises(ValueError, match="tokenizer"):
    session.feed("hello")
  with pytest.raises(ValueError, match="token ids"):
    session.feed([VOCAB])
  with pytest.raises(ValueError, match="feed\\(\\) a prompt first"):
    session.generate(3)
  chat = StatefulSession(cfg, params, tokenizer=CharTokenizer(), chunk_size=8)
  text = chat.reply("hi there", 4)
  assert isinstance(text, str) and len(text) == 4 and chat.position == 12

"""Attention sinks (StreamingLLM): a small trained RoPE model scores text 4x its training length.

The model is trained for a few seconds on byte windows of the builtin corpus at seq_len L, then
the validation text is streamed through a cache of L slots:

- sinks: the first 4 tokens stay, the rest is a rolling window (positions re-assigned in the cache);
- window: a plain rolling window, the first tokens fall out (StreamingLLM's failing baseline);
- dense: full attention over all 4L tokens, positions beyond anything seen in training.

With sinks the perplexity over 4L tokens must stay within 20 % of the in-length perplexity (the same
text cut into independent L-token windows, as in training). The other two numbers are printed (run
with -s to see them); they are a measurement, not asserted: a model this small and briefly trained
leans on nearby tokens, so neither the plain window nor dense attention need collapse.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_utils import numpy_init

from modernlm_jax.data.builtin_corpus import builtin_split
from modernlm_jax.data.tokenizers import ByteTokenizer
from modernlm_jax.generate import generate, streaming_nll
from modernlm_jax.model import LanguageModel, ModelConfig

L = 64  # training length = cache length
SINKS = 4
STEPS = 200
BATCH = 16


def train_tiny_rope_model():
  tok = ByteTokenizer()
  cfg = ModelConfig(
    vocab_size=320,
    max_len=L,
    n_layers=2,
    d_model=64,
    n_heads=4,
    d_ff=128,
    family="modern",
    positions="rope",
    norm="rmsnorm",
    mlp="swiglu",
    use_bias=False,
  )
  stream = np.concatenate([np.asarray(tok.encode(d) + [tok.eos_id], np.int32) for d in builtin_split("train")])
  model = LanguageModel(cfg)
  opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 20, STEPS, 3e-4), weight_decay=0.01)
  params = numpy_init(cfg)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, rows_BT):
    def loss_fn(p):
      logits = model.apply({"params": p}, rows_BT[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, rows_BT[:, 1:]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  losses = []
  for _ in range(STEPS):
    starts = rng.integers(0, len(stream) - L - 1, BATCH)
    rows = np.stack([stream[s : s + L + 1] for s in starts])
    params, opt_state, loss = step(params, opt_state, jnp.asarray(rows))
    losses.append(float(loss))
  return cfg, params, tok, losses


def ppl(nll) -> float:
  return math.exp(float(np.mean(nll)))


@pytest.mark.slow
def test_sinks_keep_perplexity_past_training_length():
  cfg, params, tok, losses = train_tiny_rope_model()
  assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 1.0, "the model did not learn; the test would mean nothing"

  val = [tok.encode(d) for d in builtin_split("validation")]
  texts = [d[: 4 * L] for d in val if len(d) >= 4 * L][:4]
  assert len(texts) >= 2
  dense_apply = jax.jit(LanguageModel(cfg).apply)
  results = {"sinks": [], "window": [], "dense": []}
  for ids in texts:
    results["sinks"].append(streaming_nll(params, cfg, ids, cache_len=L, stream_sinks=SINKS))
    results["window"].append(streaming_nll(params, cfg, ids, cache_len=L, stream_sinks=None))
    logits = dense_apply({"params": params}, jnp.asarray([ids], jnp.int32))[0, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    results["dense"].append(-np.asarray(logp)[np.arange(len(ids) - 1), np.asarray(ids[1:])])
  nll = {k: np.stack(v) for k, v in results.items()}  # [texts, 4L-1]

  # Within the first L tokens all three see exactly the same attention.
  np.testing.assert_allclose(nll["sinks"][:, : L - 1], nll["dense"][:, : L - 1], rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(nll["window"][:, : L - 1], nll["dense"][:, : L - 1], rtol=1e-3, atol=1e-3)
  # In-length reference: the same text cut into independent L-token windows, scored as in training.
  windows = np.asarray([ids[s : s + L] for ids in texts for s in range(0, 4 * L, L)], np.int32)
  logp = jax.nn.log_softmax(dense_apply({"params": params}, jnp.asarray(windows))[:, :-1], axis=-1)
  in_len_nll = -np.take_along_axis(np.asarray(logp), windows[:, 1:, None], axis=-1)[..., 0]
  in_len = ppl(in_len_nll)
  report = {k: {"ppl_4L": ppl(v), "ppl_last_L": ppl(v[:, 3 * L - 1 :])} for k, v in nll.items()}
  print(
    f"\nbyte-level RoPE model, L={L}, {STEPS} steps (final train loss {np.mean(losses[-20:]):.3f}); "
    f"in-length ppl (L-token windows) {in_len:.3f}; first L tokens only {ppl(nll['dense'][:, : L - 1]):.3f}"
  )
  for k, r in report.items():
    print(
      f"  {k:>6}: ppl over 4L {r['ppl_4L']:.3f} ({r['ppl_4L'] / in_len:.2f}x), "
      f"over tokens 3L..4L {r['ppl_last_L']:.3f} ({r['ppl_last_L'] / in_len:.2f}x)"
    )
  assert abs(report["sinks"]["ppl_4L"] / in_len - 1) <= 0.2
  assert report["sinks"]["ppl_last_L"] <= 1.2 * in_len

  # Generation streams far past the training length with sinks and stays finite and in-vocabulary.
  out = generate(params, cfg, [texts[0][: L // 2]], max_new_tokens=4 * L, stream_sinks=SINKS, temperature=0.0)[0]
  assert len(out) == 4 * L and all(0 <= t < cfg.vocab_size for t in out)

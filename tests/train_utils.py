"""Small configs and stage data for training-loop tests (synthetic batches: no tokenizer needed)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modernlm_jax.config_base import model_config_dict, train_defaults
from modernlm_jax.model import ModelConfig, init_params
from modernlm_jax.train.loop import StageData
from modernlm_jax.train.synthetic import SyntheticBatches

TINY_MODEL = dict(vocab_size=64, max_len=32, n_layers=2, d_model=32, n_heads=4, d_ff=64)
FAMILIES = {
  "gpt2": dict(family="gpt2"),
  "modern": dict(family="modern", positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False),
}


class FakeTokenizer:
  vocab_size, eos_id, identity = 64, 0, "synthetic-64"


def tiny_config(family="modern", *, steps=5, batch_size=8, seq_len=16, mesh=(-1, 1, 1), **train):
  c = ml_collections.ConfigDict()
  c.task, c.objective, c.seed, c.preset, c.init_from = "pretrain", "next_token", 0, "test", ""
  c.model = model_config_dict(ModelConfig(**{**TINY_MODEL, **FAMILIES[family]}))
  c.tokenizer = ml_collections.ConfigDict(dict(kind="bytes"))
  c.data = ml_collections.ConfigDict(dict(seq_len=seq_len))
  c.train = train_defaults()
  c.train.update(
    dict(
      steps=steps,
      batch_size=batch_size,
      warmup_steps=1,
      lr=3e-3,
      log_every=1,
      eval_every=10_000,
      checkpoint_every=10_000,
      tensorboard=False,
      async_checkpoint=False,
    )
  )
  c.train.update(train)
  c.mesh = ml_collections.ConfigDict(dict(data=mesh[0], fsdp=mesh[1], tensor=mesh[2]))
  c.dpo = ml_collections.ConfigDict(dict(beta=0.1))
  return c


def synthetic_stage(config, seed=0):
  it = SyntheticBatches(
    batch_size=config.train.batch_size, seq_len=config.data.seq_len, vocab_size=config.model.vocab_size, seed=seed
  )
  evals = [
    SyntheticBatches(
      batch_size=config.train.batch_size, seq_len=config.data.seq_len, vocab_size=config.model.vocab_size, seed=999
    ).batch_at(i)
    for i in range(2)
  ]
  return StageData(train_iter=it, eval_batches=evals, tokenizer=FakeTokenizer())


def numpy_init(cfg, seed=0, std=0.02):
  """Parameters of init_params' structure filled on the host: compiling the real init is slow on a busy CPU."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))

  def leaf(path, a):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.ones(a.shape, a.dtype)
    if name.endswith("bias']"):
      return jnp.zeros(a.shape, a.dtype)
    return jnp.asarray(rng.normal(0.0, std, a.shape), a.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract)

"""Stateful inference: feed a conversation turn by turn, carrying the model's state between calls.

Every family works. What carries the history is the decode cache from `init_cache`: for recurrent layers
(selective SSM, RWKV) a fixed-size state, so a pure recurrent model (e.g. the hybrid family) has no length
limit and each new turn costs only its own tokens; for attention layers the KV cache, so attention
families are bounded by `max_len` tokens in total (unless `stream_sinks` turns the cache into a
StreamingLLM window, which forgets the middle of the conversation).

Turns are fed in fixed-size chunks (the tail padded with position -1, which no layer writes into its
state), so the jitted step compiles once per shape however long each turn is.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modernlm_jax.model import LanguageModel, ModelConfig, init_cache


class StatefulSession:
  """One conversation (batch 1) with a carried decode cache.

  >>> session = StatefulSession(cfg, params, tokenizer)
  >>> session.feed("User: hi\\nAssistant:")      # last-token logits [V]
  >>> reply_ids = session.generate(20)           # continues from the carried state
  """

  def __init__(
    self,
    model_cfg: ModelConfig,
    params: Any,
    tokenizer: Any = None,
    max_len: int | None = None,
    chunk_size: int = 64,
    stream_sinks: int | None = None,
  ):
    if chunk_size <= 0:
      raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    self.cfg, self.params, self.tokenizer = model_cfg, params, tokenizer
    self.chunk_size, self.stream_sinks = chunk_size, stream_sinks
    self.has_attention = model_cfg.has_attention
    if self.has_attention:
      self.max_len = int(max_len or model_cfg.max_len)
      if model_cfg.positions == "learned" and self.max_len > model_cfg.max_len and stream_sinks is None:
        raise ValueError(
          f"max_len={self.max_len} exceeds the learned position table ({model_cfg.max_len}); "
          f"use max_len <= {model_cfg.max_len} or stream_sinks"
        )
    else:
      # Recurrent layers ignore the position table of the cache; one chunk of slots keeps it small.
      self.max_len = None if max_len is None else int(max_len)
    self._step = _compiled_step(model_cfg, stream_sinks)
    self.reset()

  @property
  def traces(self) -> int:
    """How many times the step has been compiled for this config (shared by all its sessions)."""
    return _TRACES[(self.cfg, self.stream_sinks)]

  def reset(self) -> None:
    """Forget the conversation."""
    cache_len = self.max_len if self.has_attention else self.chunk_size
    self.cache = init_cache(self.cfg, 1, cache_len)
    self.position = 0
    self.last_logits: np.ndarray | None = None

  def snapshot(self) -> tuple:
    """The full conversation state (arrays are immutable, so this is cheap); `restore` returns to it."""
    return self.cache, self.position, self.last_logits

  def restore(self, snapshot: tuple) -> None:
    self.cache, self.position, self.last_logits = snapshot

  def _encode(self, tokens: Sequence[int] | str) -> list[int]:
    if isinstance(tokens, str):
      if self.tokenizer is None:
        raise ValueError("feed() got text but the session has no tokenizer; pass tokenizer= or token ids")
      return list(self.tokenizer.encode(tokens))
    return [int(t) for t in tokens]

  def _check_room(self, n: int) -> None:
    if self.has_attention and self.stream_sinks is None and self.position + n > self.max_len:
      raise ValueError(
        f"this model has attention layers whose KV cache holds max_len={self.max_len} tokens; the conversation "
        f"would reach {self.position + n}. Create the session with a larger max_len, pass stream_sinks=k to keep "
        f"a rolling window, or reset(). Pure recurrent families (layer_pattern of ssm/rwkv only) have no such "
        f"bound."
      )

  def _run(self, ids: list[int], width: int) -> np.ndarray:
    tokens = np.zeros((1, width), np.int32)
    positions = np.full((1, width), -1, np.int32)
    tokens[0, : len(ids)] = ids
    positions[0, : len(ids)] = np.arange(self.position, self.position + len(ids))
    logits, self.cache = self._step(self.params, self.cache, jnp.asarray(tokens), jnp.asarray(positions))
    self.position += len(ids)
    self.last_logits = np.asarray(logits)
    return self.last_logits

  def feed(self, tokens: Sequence[int] | str) -> np.ndarray:
    """Reads a turn into the state; returns float32 logits [V] for the token after it."""
    ids = self._encode(tokens)
    if not ids:
      raise ValueError("feed() needs at least one token")
    if min(ids) < 0 or max(ids) >= self.cfg.vocab_size:
      raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size}), got {min(ids)}..{max(ids)}")
    self._check_room(len(ids))
    for start in range(0, len(ids), self.chunk_size):
      self._run(ids[start : start + self.chunk_size], self.chunk_size)
    return self.last_logits

  def generate(
    self,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop_ids: Sequence[int] = (),
    seed: int = 0,
  ) -> list[int]:
    """Samples up to `max_new_tokens` from the carried state (greedy at temperature 0). Every generated token is
    fed back, so the state afterwards includes the reply and the next `feed` continues the conversation."""
    if self.last_logits is None:
      raise ValueError("generate() continues a conversation: feed() a prompt first")
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    self._check_room(max_new_tokens)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(max_new_tokens):
      token = _sample(self.last_logits, temperature, top_k, rng)
      out.append(token)
      self._run([token], 1)
      if token in stop_ids:
        break
    return out

  def reply(self, text: str, max_new_tokens: int, **sampling) -> str:
    """Feeds `text` and returns the decoded continuation (needs a tokenizer)."""
    self.feed(text)
    return self.tokenizer.decode(self.generate(max_new_tokens, **sampling))


_TRACES: dict = {}


@functools.lru_cache(maxsize=16)
def _compiled_step(cfg: ModelConfig, stream_sinks: int | None):
  """One jitted step per config, shared by sessions, so a new conversation does not recompile."""
  model = LanguageModel(cfg)
  _TRACES.setdefault((cfg, stream_sinks), 0)

  def step(params, cache, tokens_1T, positions_1T):
    _TRACES[(cfg, stream_sinks)] += 1  # runs at trace time only: counts compilations
    logits_1TV, cache = model.apply(
      {"params": params}, tokens_1T, positions=positions_1T, cache=cache, stream_sinks=stream_sinks
    )
    last = jnp.maximum(jnp.sum(positions_1T[0] >= 0) - 1, 0)
    return logits_1TV[0, last], cache

  return jax.jit(step)


def _sample(logits_V: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> int:
  if temperature == 0:
    return int(np.argmax(logits_V))
  z = logits_V.astype(np.float64) / temperature
  if top_k is not None and top_k < z.size:
    cutoff = np.partition(z, -top_k)[-top_k]
    z = np.where(z >= cutoff, z, -np.inf)
  p = np.exp(z - z.max())
  return int(rng.choice(z.size, p=p / p.sum()))

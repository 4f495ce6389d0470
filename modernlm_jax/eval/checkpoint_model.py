"""A trained model ready for evaluation: parameters, ModelConfig, tokenizer and jitted callables.

``load_eval_model(path, *, tokenizer_cfg=None, attention_impl="") -> EvalModel``
    ``path`` is one of
    - a run directory written by the training loop (``<run>/checkpoints/<step>`` holds the
      parameters and, in its metadata, the model config and the tokenizer identity; a trained
      SentencePiece model lives in ``<run>/tokenizer/``), or one ``<run>/checkpoints/<step>``;
    - a directory with ``params.msgpack`` + ``model_config.json`` (e.g. Hugging Face GPT-2
      imported by ``python -m modernlm_jax.interop import``); its tokenizer is GPT-2 BPE when
      the vocabulary has 50257 entries, otherwise ``tokenizer_cfg`` must name it.
    ``tokenizer_cfg`` (a mapping with ``kind`` and ``path``; empty kind = the checkpoint's own)
    overrides the tokenizer. When the checkpoint recorded a tokenizer identity, the tokenizer
    used must have exactly that identity, otherwise :class:`EvalTokenizerMismatchError`.

``EvalModel.forward_fn(context, batch_size)``
    ``forward_fn(tokens_BT, positions_BT, segment_ids_BT) -> logits_BTV`` (float32). Inputs are
    padded to ``batch_size`` rows and to a power-of-two length (>= 16, <= ``context``) before
    the one jitted apply, so the whole suite compiles only a handful of shapes.
``EvalModel.generate_fn(context, batch_size)``
    ``generate_fn(prompts, max_new_tokens, stop_ids) -> continuations`` (greedy, KV cache of
    ``context`` slots, batch padded to ``batch_size``). Prompts longer than
    ``context - max_new_tokens`` keep their rightmost tokens; ``EvalModel.truncated_prompts``
    counts them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modernlm_jax.model import LanguageModel, ModelConfig
from modernlm_jax.train import checkpoint as ckpt_lib
from modernlm_jax.train.checkpoint import CheckpointError as EvalCheckpointError  # the one error class

ForwardFn = Callable[[Any, Any, Any], jax.Array]
GenerateFn = Callable[[list[list[int]], int, list[int]], list[list[int]]]


class EvalTokenizerMismatchError(ValueError):
  """The tokenizer to evaluate with is not the one the checkpoint was trained with."""


def _bucket(length: int, context: int, minimum: int = 16) -> int:
  T = minimum
  while T < length:
    T *= 2
  return min(T, context)


@dataclasses.dataclass
class EvalModel:
  params: Any
  cfg: ModelConfig
  tokenizer: Any
  source: str
  step: int | None = None
  meta: dict = dataclasses.field(default_factory=dict)
  truncated_prompts: int = 0

  @property
  def num_params(self) -> int:
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(self.params)))

  def forward_fn(self, context: int, batch_size: int) -> ForwardFn:
    if context > self.cfg.max_len:
      raise ValueError(
        f"context {context} exceeds the model's max_len {self.cfg.max_len}; evaluate with context <= {self.cfg.max_len}"
      )
    apply = _jitted_apply(self.cfg)
    params = self.params

    def forward(tokens_BT, positions_BT, segment_ids_BT):
      B, T = np.shape(tokens_BT)
      if B > batch_size or T > context:
        raise ValueError(f"forward_fn got a [{B}, {T}] batch; it was built for at most [{batch_size}, {context}]")
      Tp = _bucket(T, context)
      pad = ((0, batch_size - B), (0, Tp - T))
      # Padding rows/columns get segment 0, so no real token attends to them.
      logits = apply(
        params,
        jnp.pad(jnp.asarray(tokens_BT, jnp.int32), pad),
        jnp.pad(jnp.asarray(positions_BT, jnp.int32), pad),
        jnp.pad(jnp.asarray(segment_ids_BT, jnp.int32), pad),
      )
      return logits[:B, :T]

    return forward

  def generate_fn(self, context: int, batch_size: int) -> GenerateFn:
    from modernlm_jax.generate import generate

    if context > self.cfg.max_len:
      raise ValueError(f"context {context} exceeds the model's max_len {self.cfg.max_len}")
    pad_prompt = [int(self.tokenizer.eos_id)]

    def fn(prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int]) -> list[list[int]]:
      budget = context - max_new_tokens
      if budget < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in context {context}")
      out: list[list[int]] = []
      for start in range(0, len(prompts), batch_size):
        chunk = []
        for p in prompts[start : start + batch_size]:
          p = list(p) or pad_prompt
          if len(p) > budget:
            self.truncated_prompts += 1
            p = p[-budget:]
          chunk.append(p)
        n = len(chunk)
        chunk += [pad_prompt] * (batch_size - n)  # a fixed batch keeps one compiled decode loop
        res = generate(
          self.params, self.cfg, chunk, max_new_tokens=max_new_tokens, stop_ids=list(stop_ids), cache_len=context
        )
        out.extend(res[:n])
      return out

    return fn


@functools.lru_cache(maxsize=8)
def _jitted_apply(cfg: ModelConfig):
  model = LanguageModel(cfg)

  @jax.jit
  def apply(params, tokens_BT, positions_BT, segment_ids_BT):
    return model.apply({"params": params}, tokens_BT, positions=positions_BT, segment_ids=segment_ids_BT)

  return apply


def _tokenizer_from_cfg(tok_cfg: Mapping[str, Any], run_dir: Path | None):
  import ml_collections

  from modernlm_jax.data.tokenizers import build_tokenizer

  d = ml_collections.ConfigDict(dict(tok_cfg))
  if d.kind == "sentencepiece" and not d.get("path") and run_dir is not None:
    model_file = run_dir / "tokenizer" / "sentencepiece.model"
    if not model_file.is_file():
      raise EvalCheckpointError(
        f"the run {run_dir} trained a SentencePiece tokenizer but {model_file} is missing; copy the run's "
        "tokenizer/ folder next to its checkpoints/ or pass --config.tokenizer.path=<file.model>"
      )
    d.path = str(model_file)
  return build_tokenizer(d, str(run_dir) if run_dir else None)


def _check_identity(tokenizer, expected: str | None, source: str) -> None:
  if expected and tokenizer.identity != expected:
    raise EvalTokenizerMismatchError(
      f"{source} was trained with tokenizer {expected!r} but evaluation would use {tokenizer.identity!r}; "
      "token ids would mean different strings. Evaluate with the checkpoint's own tokenizer (leave "
      "--config.tokenizer.kind empty, keep the run's tokenizer/ folder) or pick a checkpoint trained with "
      "this tokenizer"
    )


def load_eval_model(
  path: str | Path, *, tokenizer_cfg: Mapping[str, Any] | None = None, attention_impl: str = ""
) -> EvalModel:
  """Loads parameters, ModelConfig and tokenizer from a run or params directory; see module docstring."""
  from modernlm_jax.data.tokenizers import GPT2_VOCAB_SIZE, GPT2Tokenizer, check_vocab_fits

  loc = ckpt_lib.locate_run(path, key="checkpoint")
  override = dict(tokenizer_cfg or {})
  if not override.get("kind"):
    override = {}
  params, meta, step = ckpt_lib.load_run_params(loc, key="checkpoint")
  cfg = ModelConfig.from_dict(meta["model"])
  if loc.exported:
    if override:
      tokenizer = _tokenizer_from_cfg(override, None)
    elif cfg.vocab_size == GPT2_VOCAB_SIZE:
      tokenizer = GPT2Tokenizer()
    else:
      raise EvalCheckpointError(
        f"{loc.params_dir} stores no tokenizer and its vocabulary ({cfg.vocab_size}) is not GPT-2's "
        f"({GPT2_VOCAB_SIZE}); name it with --config.tokenizer.kind=bytes|sentencepiece (and "
        "--config.tokenizer.path=...)"
      )
  else:
    stored_tok = (meta.get("config") or {}).get("tokenizer") or {"kind": meta.get("tokenizer_kind", "")}
    tokenizer = _tokenizer_from_cfg(override or stored_tok, loc.run_dir)
    _check_identity(tokenizer, meta.get("tokenizer_identity"), f"checkpoint {loc.ckpt_dir}/{step}")
  if attention_impl:
    cfg = cfg.replace(attention_impl=attention_impl)
  check_vocab_fits(tokenizer, cfg.vocab_size)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  return EvalModel(params=params, cfg=cfg, tokenizer=tokenizer, source=str(path), step=step, meta=meta)

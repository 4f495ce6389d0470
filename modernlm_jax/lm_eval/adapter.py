"""`ModernLM`: an `lm_eval.api.model.LM` over one of our checkpoints, scoring with our own scorer.

Log-likelihoods go through `eval.scoring` (the code our own few-shot tasks use): the same
context/continuation split (`encode_pair`), the same left truncation to the model's context, rows
batched and padded to a few bucketed lengths for the one jitted forward pass. So for the same items and
prompts lm-eval's numbers equal ours. Empty contexts are conditioned on the tokenizer's EOS, as
lm-eval's own models do with their prefix token. `generate_until` is greedy decoding with the KV cache
(`generate.py`), cut at the first stop string.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from modernlm_jax.eval.checkpoint_model import load_eval_model
from modernlm_jax.eval.scoring import encode_pair, score_requests

MODEL_NAME = "modernlm_jax"


@register_model(MODEL_NAME, "modernlm")
class ModernLM(LM):
  """lm-eval model: `model_args="checkpoint=RUN[,batch_size=16,context=1024,max_gen_toks=256]"`."""

  def __init__(
    self,
    checkpoint: str = "",
    batch_size: int | str = 16,
    context: int | str = 0,
    max_gen_toks: int | str = 256,
    attention_impl: str = "",
    model=None,
    **unused: Any,
  ):
    super().__init__()
    if model is None and not checkpoint:
      raise ValueError("ModernLM needs checkpoint=<run directory, checkpoints/<step>, or params directory>")
    del unused  # lm-eval passes generic options (device, dtype, ...) that do not apply to a JAX model
    self.model = model if model is not None else load_eval_model(checkpoint, attention_impl=attention_impl)
    self.tokenizer = self.model.tokenizer
    self.batch_size = int(batch_size) if str(batch_size) != "auto" else 16
    self.context = int(context) or int(self.model.cfg.max_len)
    if not 1 <= self.context <= self.model.cfg.max_len:
      raise ValueError(f"context={self.context} must be in [1, max_len={self.model.cfg.max_len}]")
    self.max_gen_toks = int(max_gen_toks)
    self._forward = self.model.forward_fn(self.context, self.batch_size)
    self.truncated = 0  # requests whose context was left-truncated to fit

  @property
  def eot_token_id(self) -> int:
    return int(self.tokenizer.eos_id)

  @property
  def tokenizer_name(self) -> str:
    return self.tokenizer.identity

  def _encode(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if not context:
      return [self.eot_token_id], list(self.tokenizer.encode(continuation))
    return encode_pair(self.tokenizer, context, continuation)

  def _score(self, pairs: list[tuple[list[int], list[int]]]):
    scored = score_requests(self._forward, pairs, context=self.context, batch_size=self.batch_size)
    self.truncated += scored.num_truncated
    return scored

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    pairs = [self._encode(*req.args) for req in requests]
    out = self._score(pairs).as_tuples()
    for req, res in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood", req.args, res)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Whole-document log-likelihood in disjoint windows of the model's context (every token scored once)."""
    pairs, owner = [], []
    for i, req in enumerate(requests):
      (text,) = req.args
      windows = get_rolling_token_windows(
        list(self.tokenizer.encode(text)), prefix_token=self.eot_token_id, max_seq_len=self.context, context_len=1
      )
      for w in windows:
        pairs.append(make_disjoint_window(w))
        owner.append(i)
    totals = [0.0] * len(requests)
    if pairs:
      for i, lp in zip(owner, self._score(pairs).logprob):
        totals[i] += float(lp)
    for req, res in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy continuations, grouped by their generation settings so each group is one batched decode."""
    groups: dict[tuple, list[int]] = {}
    settings = []
    for i, req in enumerate(requests):
      context, kwargs = req.args
      kwargs = dict(kwargs or {})
      if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
        raise ValueError(f"generate_until got {kwargs}: this backend decodes greedily only; set do_sample=False")
      until = kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
      settings.append((context, until))
      groups.setdefault((max_new,), []).append(i)
    out = [""] * len(requests)
    for (max_new,), idx in groups.items():
      generate = self.model.generate_fn(self.context, self.batch_size)
      prompts = [list(self.tokenizer.encode(settings[i][0])) or [self.eot_token_id] for i in idx]
      for i, ids in zip(idx, generate(prompts, max_new, [self.eot_token_id])):
        ids = list(ids)
        text = self.tokenizer.decode(ids[: ids.index(self.eot_token_id)] if self.eot_token_id in ids else ids)
        for stop in settings[i][1]:
          if stop and stop in text:
            text = text[: text.index(stop)]
        out[i] = text
        self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return out

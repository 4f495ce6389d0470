"""Conversational ability: dialogue perplexity and BLEU of greedy replies on held-out transcripts.

A dialogue is a list of turns by two alternating speakers (the second speaker is the one whose
replies are scored), optionally with persona lines. It is rendered as

    Persona: <line>            (PersonaChat only)
    User: <turn 1>
    Assistant: <turn 2>
    ...

the same ``User:``/``Assistant:`` layout as the tier-3 statefulness probes. For each dialogue the
last assistant turn is the reply: its perplexity (and bits/byte) is scored given everything before
it, and a greedy reply generated from the same prompt is compared with it by corpus BLEU.

Loaders (public layouts):
- DailyDialog: JSON lines or a JSON array of ``{"dialog": [utterance, ...], ...}`` (the Hugging Face
  ``daily_dialog`` export; ``"utterances"`` / ``"turns"`` are accepted as the key too).
- PersonaChat: ``{"train": [...], "valid": [...]}`` (``personachat_self_original.json``) where each
  entry has ``"personality": [...]`` and ``"utterances": [{"history": [...], "candidates": [...]}]``
  with the gold reply as the last candidate; the longest history of each entry is used.
- HH-RLHF (the offline default): ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", ...}`` JSON
  lines (``.gz`` ok); the chosen side, held-out (test) split, from the shared data folder.

BLEU is sacrebleu's corpus BLEU when sacrebleu is installed (``pip install sacrebleu``), else
``corpus_bleu`` here: BLEU-4 with the brevity penalty and exponential smoothing of zero counts,
on a word / punctuation split (equal to sacrebleu's on text without special punctuation cases).

Public API
----------
``Dialogue(turns, persona=())``; ``load_daily_dialog(path)``, ``load_persona_chat(path, split)``,
``load_hh(paths, limit)``, ``default_hh_paths(root)``, ``load_dialogues(spec, limit)``.
``prompt_and_reply(dialogue) -> (prompt, reply)``.
``evaluate(forward_fn, generate_fn, tokenizer, dialogues, *, context, max_new_tokens, batch_size) -> dict``
    ``{"dialogues", "reply_tokens", "nll_per_token", "ppl", "bpb", "bleu", "bleu_impl", "samples"}``.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modernlm_jax.eval.scoring import ForwardFn, encode_pair, score_requests

USER, ASSISTANT, PERSONA = "User:", "Assistant:", "Persona:"
HH_SUBSETS = ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled")


@dataclasses.dataclass(frozen=True)
class Dialogue:
  turns: tuple[str, ...]  # alternating user, assistant, user, ... (the last assistant turn is the reply)
  persona: tuple[str, ...] = ()


def _clean(text: str) -> str:
  return " ".join(str(text).split())


def _make(turns: Sequence[str], persona: Sequence[str] = ()) -> Dialogue | None:
  turns = [_clean(t) for t in turns if _clean(t)]
  if len(turns) % 2:  # end on an assistant turn: drop a trailing user turn
    turns = turns[:-1]
  return Dialogue(tuple(turns), tuple(_clean(p) for p in persona if _clean(p))) if len(turns) >= 2 else None


# --------------------------------------------------------------------------- loaders


def _json_records(path: Path) -> list[Any]:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt", encoding="utf-8") as f:
    text = f.read()
  stripped = text.lstrip()
  if stripped.startswith("[") or (stripped.startswith("{") and "\n{" not in stripped.strip()):
    data = json.loads(text)
    return data if isinstance(data, list) else [data]
  out = []
  for i, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not JSON ({e}); expected one dialogue object per line") from None
  return out


def load_daily_dialog(path: str | os.PathLike) -> list[Dialogue]:
  path = Path(path)
  out = []
  for i, rec in enumerate(_json_records(path)):
    key = next((k for k in ("dialog", "utterances", "turns") if isinstance(rec, dict) and k in rec), None)
    if key is None or not isinstance(rec[key], list):
      raise ValueError(f"{path}: record {i} has no 'dialog' list of utterances (DailyDialog layout)")
    d = _make(rec[key])
    if d:
      out.append(d)
  return out


def load_persona_chat(path: str | os.PathLike, split: str = "valid") -> list[Dialogue]:
  path = Path(path)
  data = _json_records(path)
  if len(data) == 1 and isinstance(data[0], dict) and "utterances" not in data[0]:
    data = data[0]  # {"train": [...], "valid": [...]}
    if split not in data:
      raise ValueError(f"{path}: no split {split!r}; splits present: {sorted(data)}")
  entries = data[split] if isinstance(data, dict) else data
  out = []
  for i, e in enumerate(entries):
    if not isinstance(e, dict) or not isinstance(e.get("utterances"), list) or not e["utterances"]:
      raise ValueError(f"{path}: {split}[{i}] lacks 'utterances' (PersonaChat layout: personality, utterances)")
    last = max(e["utterances"], key=lambda u: len(u.get("history", [])))
    if not last.get("candidates"):
      raise ValueError(f"{path}: {split}[{i}] has an utterance without candidates (the gold reply is the last)")
    d = _make([*last.get("history", []), last["candidates"][-1]], e.get("personality", []))
    if d:
      out.append(d)
  return out


def _split_hh(text: str) -> list[str]:
  parts = re.split(r"\n\n(Human|Assistant):", "\n\n" + text.strip() if not text.startswith("\n\n") else text)
  turns, expected = [], "Human"
  for speaker, body in zip(parts[1::2], parts[2::2]):
    if speaker != expected:
      return turns  # a malformed alternation ends the usable part
    turns.append(body)
    expected = "Assistant" if expected == "Human" else "Human"
  return turns


def load_hh(paths: Sequence[str | os.PathLike], limit: int = 0) -> list[Dialogue]:
  out = []
  for p in paths:
    for rec in _json_records(Path(p)):
      if not isinstance(rec, dict) or not isinstance(rec.get("chosen"), str):
        raise ValueError(f"{p}: a record lacks the 'chosen' transcript (HH-RLHF layout)")
      d = _make(_split_hh(rec["chosen"]))
      if d:
        out.append(d)
      if limit and len(out) >= limit:
        return out
  return out


def default_hh_paths(root: str | os.PathLike) -> list[Path]:
  """The held-out (test) splits of the shared HH-RLHF copy, in a fixed order."""
  root = Path(root) / "hh_rlhf"
  return [root / s / "test.jsonl.gz" for s in HH_SUBSETS if (root / s / "test.jsonl.gz").is_file()]


def load_dialogues(spec: str, limit: int = 0, data_root: str | os.PathLike | None = None) -> list[Dialogue]:
  """``hh`` (shared HH-RLHF test split), ``hh:PATH``, ``dailydialog:PATH``, ``personachat:PATH[@split]``."""
  kind, _, target = spec.partition(":")
  if kind == "hh":
    paths = [Path(target)] if target else default_hh_paths(data_root or "")
    if not paths:
      raise FileNotFoundError(
        f"no HH-RLHF test split under {Path(data_root or '') / 'hh_rlhf'}; set "
        "compare.data_root (or $MODERNLM_SHARED_DATA) or compare.dialogue.source=hh:PATH"
      )
    d = load_hh(paths, limit)
  elif kind == "dailydialog":
    d = load_daily_dialog(target)
  elif kind == "personachat":
    path, _, split = target.partition("@")
    d = load_persona_chat(path, split or "valid")
  else:
    raise ValueError(f"unknown dialogue source {spec!r}; use hh, hh:PATH, dailydialog:PATH or personachat:PATH[@split]")
  return d[:limit] if limit else d


# --------------------------------------------------------------------------- rendering


def render(d: Dialogue, upto: int | None = None) -> str:
  lines = [f"{PERSONA} {p}" for p in d.persona]
  for i, t in enumerate(d.turns[:upto]):
    lines.append(f"{USER if i % 2 == 0 else ASSISTANT} {t}")
  return "\n".join(lines)


def prompt_and_reply(d: Dialogue) -> tuple[str, str]:
  """The prompt ends with "Assistant:"; the reply (with its leading space) is the last turn."""
  return render(d, len(d.turns) - 1) + f"\n{ASSISTANT}", " " + d.turns[-1]


def first_line(text: str) -> str:
  """A generated reply ends where the next turn would start."""
  text = text.split("\n", 1)[0]
  for marker in (USER, ASSISTANT, PERSONA):
    text = text.split(marker, 1)[0]
  return text.strip()


# --------------------------------------------------------------------------- BLEU


def bleu_tokens(text: str) -> list[str]:
  return re.findall(r"\w+(?:'\w+)?|[^\w\s]", text)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
  """Corpus BLEU (0-100): geometric mean of clipped n-gram precisions x brevity penalty; a zero
  count at order n counts as 1 / (2^k · total_n) for the k-th such order (exponential smoothing)."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  match, total = np.zeros(max_n), np.zeros(max_n)
  hyp_len = ref_len = 0
  for h, r in zip(hypotheses, references):
    ht, rt = bleu_tokens(h), bleu_tokens(r)
    hyp_len, ref_len = hyp_len + len(ht), ref_len + len(rt)
    for n in range(1, max_n + 1):
      hc = collections.Counter(tuple(ht[i : i + n]) for i in range(len(ht) - n + 1))
      rc = collections.Counter(tuple(rt[i : i + n]) for i in range(len(rt) - n + 1))
      match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
      total[n - 1] += max(len(ht) - n + 1, 0)
  if hyp_len == 0:
    return 0.0
  log_p, k = 0.0, 1.0
  for n in range(max_n):
    if total[n] == 0:
      return 0.0
    if match[n] == 0:
      k *= 2
      log_p += math.log(1.0 / (k * total[n]))
    else:
      log_p += math.log(match[n] / total[n])
  bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
  return 100.0 * bp * math.exp(log_p / max_n)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """(score, which implementation): sacrebleu when installed, else ours."""
  try:
    import sacrebleu
  except ImportError:
    return corpus_bleu(hypotheses, references), "modernlm_jax corpus_bleu (pip install sacrebleu for sacreBLEU)"
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score), f"sacrebleu {sacrebleu.__version__}"


# --------------------------------------------------------------------------- evaluation


def evaluate(
  forward_fn: ForwardFn,
  generate_fn: Callable | None,
  tokenizer: Any,
  dialogues: Sequence[Dialogue],
  *,
  context: int,
  max_new_tokens: int = 32,
  batch_size: int = 8,
  samples: int = 3,
) -> dict[str, Any]:
  """Reply perplexity (and bits/byte) by log-likelihood; BLEU of greedy replies when ``generate_fn`` is given.

  ``generate_fn(prompts_ids, max_new_tokens, stop_ids) -> list[list[int]]`` (greedy) as the eval suite uses.
  """
  if not dialogues:
    raise ValueError("no dialogues to evaluate (every one had fewer than two turns?)")
  pairs = [prompt_and_reply(d) for d in dialogues]
  requests = []
  for prompt, reply in pairs:
    ctx, cont = encode_pair(tokenizer, prompt, reply)
    requests.append(([tokenizer.eos_id, *ctx], cont[:context]))
  scored = score_requests(forward_fn, requests, context=context, batch_size=batch_size, label="dialogue")
  n_tok = int(scored.num_tokens.sum())
  nll = float(-scored.logprob.sum())
  n_bytes = sum(len(r.encode("utf-8")) for _, r in pairs)
  out: dict[str, Any] = {
    "dialogues": len(dialogues),
    "reply_tokens": n_tok,
    "nll_per_token": nll / n_tok,
    "ppl": float(math.exp(min(nll / n_tok, 700.0))),
    "bpb": nll / math.log(2) / n_bytes,
    "truncated": scored.num_truncated,
  }
  if generate_fn is not None:
    prompts = [[tokenizer.eos_id, *tokenizer.encode(p)] for p, _ in pairs]
    generated = generate_fn(prompts, max_new_tokens, [tokenizer.eos_id])
    hyps = [first_line(tokenizer.decode([t for t in g if t != tokenizer.eos_id])) for g in generated]
    refs = [r.strip() for _, r in pairs]
    out["bleu"], out["bleu_impl"] = bleu(hyps, refs)
    out["max_new_tokens"] = int(max_new_tokens)
    out["samples"] = [
      {"prompt_tail": p[-200:], "reference": r, "greedy": h} for (p, _), r, h in list(zip(pairs, refs, hyps))[:samples]
    ]
  return out

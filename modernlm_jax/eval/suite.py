"""Named evaluation suites -> one result dict, plus a markdown rendering.

``run_suite(name, *, forward_fn, generate_fn, tokenizer, context, data_root,
            progress=print, batch_size=16, ppl_texts=None, seed=0,
            require_gpt2_protocol=True) -> dict``

- ``quick``: minutes on CPU for a tiny model. Perplexity / bits-per-byte on the
  validation texts in ``ppl_texts`` (name -> text; default: the builtin corpus's validation
  split, documents joined by blank lines; ``{}`` for none) and on a slice of TinyStories
  validation; the first few dozen examples of every task whose data is
  present; a small probe set.
- ``medium``: ``quick`` with the first 300 examples of every task (an accuracy's standard
  error near chance is then about 2.5 points, where 32 examples leave about 8).
- ``full``: WikiText-2 test perplexity with the GPT-2 protocol (sequence 1024,
  non-overlapping windows, batch 32, GPT-2 BPE; the stored file is the word-tokenized
  ``wiki.test.tokens`` and is scored as stored, so word perplexity is reported too), plus
  WikiText-103 test, PTB test, TinyStories validation and the ``ppl_texts`` (default: the
  builtin validation split), every LAMBADA / HellaSwag / SST-2 /
  GSM8K example and the full probe set.

Tasks or corpora whose data is absent (or GSM8K without ``generate_fn``) are reported as
``{"skipped": reason}``; they never stop the suite. A malformed task file still raises.
With ``require_gpt2_protocol`` the ``full`` suite first calls
``check_tokenizer(tokenizer, "gpt2")`` and stops with a clear error for any other
tokenizer; pass ``require_gpt2_protocol=False`` to evaluate anyway (token perplexity is then
not comparable with GPT-2's; bits per byte still is).

``to_markdown(result) -> str`` renders perplexity, task and probe tables.
``comparison_entry(result) -> dict`` reshapes a result into the comparison-results run schema
(``tasks``: headline accuracy per task; ``statefulness``: by_tier / by_distance / score).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modernlm_jax.eval import fewshot as tasks
from modernlm_jax.eval import perplexity, statefulness
from modernlm_jax.eval.fewshot.gsm8k import GenerateFn
from modernlm_jax.eval.scoring import ForwardFn

GPT2_IDENTITY_PREFIX = "gpt2"


class TokenizerMismatchError(ValueError):
  """The tokenizer is not the one an evaluation protocol requires."""


def check_tokenizer(tokenizer: Any, expected_identity_prefix: str) -> None:
  """Raises unless ``tokenizer.identity`` starts with ``expected_identity_prefix``."""
  identity = getattr(tokenizer, "identity", None)
  if not isinstance(identity, str) or not identity.startswith(expected_identity_prefix):
    raise TokenizerMismatchError(
      f"this evaluation protocol needs a tokenizer whose identity starts with "
      f"{expected_identity_prefix!r}, but the checkpoint's tokenizer is {identity!r}. "
      "Evaluate a checkpoint trained with that tokenizer, or (for the 'full' suite) pass "
      "require_gpt2_protocol=False and compare bits per byte instead of token perplexity"
    )


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  name: str
  max_chars: int | None = None
  context: int | None = None  # None: min(model context, 1024)
  stride: int | None = None  # None: same as context (non-overlapping)
  batch_size: int | None = None
  gpt2_protocol: bool = False


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
  corpora: tuple[CorpusSpec, ...]
  ppl_text_chars: int | None
  task_limit: int | None
  gsm8k_limit: int | None
  gsm8k_max_new_tokens: int
  num_fewshot: Mapping[str, int]
  probes_per_tier: int


FEWSHOT = {name: t.num_fewshot for name, t in tasks.TASKS.items()}

_QUICK = SuiteSpec(
  corpora=(CorpusSpec("tinystories:valid", max_chars=20_000),),
  ppl_text_chars=20_000,
  task_limit=32,
  gsm8k_limit=8,
  gsm8k_max_new_tokens=64,
  num_fewshot=FEWSHOT,
  probes_per_tier=8,
)

SUITES: dict[str, SuiteSpec] = {
  "quick": _QUICK,
  # quick with 300 examples per task: an accuracy's standard error near chance is then ~2.5 points, not ~8.
  "medium": dataclasses.replace(_QUICK, task_limit=300),
  "full": SuiteSpec(
    corpora=(
      CorpusSpec("wikitext2:test", context=1024, stride=1024, batch_size=32, gpt2_protocol=True),
      CorpusSpec("wikitext103:test"),
      CorpusSpec("ptb:test"),
      CorpusSpec("tinystories:valid"),
    ),
    ppl_text_chars=None,
    task_limit=None,
    gsm8k_limit=None,
    gsm8k_max_new_tokens=256,
    num_fewshot=FEWSHOT,
    probes_per_tier=100,
  ),
}


def _builtin_validation_text() -> dict[str, str]:
  """The data package's builtin corpus validation split, or nothing if it cannot be built."""
  try:
    from modernlm_jax.data.builtin_corpus import builtin_split

    docs = builtin_split("validation")
  except (ImportError, OSError):  # an incomplete install must not stop the suite
    return {}
  return {"builtin:validation": "\n\n".join(docs)} if docs else {}


def _perplexity_section(
  spec: SuiteSpec,
  forward_fn: ForwardFn,
  tokenizer: Any,
  context: int,
  data_root: Path | None,
  batch_size: int,
  ppl_texts: Mapping[str, str] | None,
  gpt2_ok: bool,
  progress: Callable[[str], None],
  *,
  split: str = "",
  stride: int = 0,
  texts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
  out: dict[str, Any] = {}
  default_ctx = min(context, 1024)
  if stride and not 1 <= stride <= default_ctx:
    raise ValueError(f"eval.stride={stride} must be in [1, context={default_ctx}] (0 = the context: no overlap)")
  if ppl_texts is None:
    ppl_texts = _builtin_validation_text()
  for name, text in ppl_texts.items():
    text = text if spec.ppl_text_chars is None else text[: spec.ppl_text_chars]
    out[name] = perplexity.evaluate_text(
      forward_fn,
      tokenizer,
      text,
      context=default_ctx,
      stride=stride or default_ctx,
      batch_size=batch_size,
      progress=progress,
      label=f"perplexity {name}",
    )
  if not ppl_texts:
    out["builtin"] = {"skipped": "no validation text (ppl_texts empty, builtin corpus unavailable)"}
  for name, text in (texts or {}).items():  # user texts are scored whole (never cut)
    out[name] = perplexity.evaluate_text(
      forward_fn,
      tokenizer,
      text,
      context=default_ctx,
      stride=stride or default_ctx,
      batch_size=batch_size,
      progress=progress,
      label=f"perplexity {name}",
    )
  for c in spec.corpora:
    name = perplexity.with_split(c.name, split)
    path = perplexity.corpus_path(name, data_root) if data_root else None
    if path is None or not path.is_file():
      out[name] = {"skipped": f"data not found ({path or 'no data_root'})"}
      continue
    ctx = c.context or default_ctx
    if ctx > context:
      out[name] = {"skipped": f"protocol needs context {ctx}, model has {context}"}
      continue
    text = perplexity.load_corpus(name, data_root, max_chars=c.max_chars)
    res = perplexity.evaluate_text(
      forward_fn,
      tokenizer,
      text,
      context=ctx,
      stride=min(stride, ctx) or c.stride or ctx,
      batch_size=c.batch_size or batch_size,
      count_words=perplexity.is_word_level(name),
      progress=progress,
      label=f"perplexity {name}",
    )
    if c.gpt2_protocol:
      res["protocol"] = (
        "gpt2"
        if gpt2_ok and res["stride"] == (c.stride or ctx) and name == c.name
        else "bits/byte only (tokenizer is not GPT-2 BPE)"
        if not gpt2_ok
        else f"not the GPT-2 protocol (split {name}, stride {res['stride']})"
      )
    out[name] = res
  return out


def task_names() -> list[str]:
  """Every registered few-shot task (eval/fewshot/registry.py), in registration order."""
  return list(tasks.TASKS)


def run_tasks(
  name: str,
  *,
  forward_fn: ForwardFn,
  generate_fn: GenerateFn | None,
  tokenizer: Any,
  context: int,
  data_root: str | Path | None,
  batch_size: int = 16,
  seed: int = 0,
  progress: Callable[[str], None] | None = None,
  timings: dict[str, float] | None = None,
  skip_reason: str = "",
  errors_as_skips: bool = False,
) -> dict[str, Any]:
  """The downstream tasks of suite ``name``: task -> result dict, or ``{"skipped": reason}`` (never dropped).

  With ``errors_as_skips`` a task that raises (e.g. a continuation longer than the context) is recorded
  as skipped with the error, so one task cannot sink a comparison member."""
  spec = SUITES[name]
  say = progress or (lambda _: None)
  root = Path(data_root) if data_root else None
  out: dict[str, Any] = {}
  for task, entry in tasks.TASKS.items():
    t0 = time.perf_counter()
    path = tasks.task_path(task, root) if root is not None else None
    if path is None:
      why = skip_reason or (
        "no data_root" if root is None else f"no data for {task} under {root} (expected {' or '.join(entry.files)})"
      )
      out[task] = {"skipped": why}
      continue
    say(f"[{name}] {task}")
    common = dict(
      num_fewshot=spec.num_fewshot.get(task, entry.num_fewshot),
      seed=seed,
      context=context,
      batch_size=batch_size,
      progress=say,
    )
    if entry.needs == "generate" and generate_fn is None:
      out[task] = {"skipped": "no generate_fn given"}
      continue
    try:
      if entry.needs == "generate":
        out[task] = entry.run(
          generate_fn,
          tokenizer,
          path,
          limit=spec.gsm8k_limit,
          max_new_tokens=min(spec.gsm8k_max_new_tokens, context // 2),
          **common,
        )
      else:
        out[task] = entry.run(forward_fn, tokenizer, path, limit=spec.task_limit, **common)
    except Exception as e:  # noqa: BLE001 - re-raised unless the caller asked for a recorded skip
      if not errors_as_skips:
        raise
      out[task] = {"skipped": f"could not run: {type(e).__name__}: {e}"[:500]}
    if timings is not None:
      timings[task] = time.perf_counter() - t0
  return out


def corpus_perplexity(
  forward_fn: ForwardFn,
  tokenizer: Any,
  corpus: str,
  *,
  context: int,
  data_root: str | Path | None,
  stride: int | None = None,
  batch_size: int = 16,
  max_chars: int | None = None,
  progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
  """Perplexity and bits/byte of one corpus (a ``perplexity.CORPORA`` name, a text file or a glob), or
  ``{"skipped": reason}`` when its data is absent."""
  try:
    text = perplexity.load_corpus(corpus, data_root, max_chars=max_chars)
  except (FileNotFoundError, ValueError) as e:
    return {"skipped": str(e)}
  if not text.strip():
    return {"skipped": f"corpus {corpus!r} is empty"}
  res = perplexity.evaluate_text(
    forward_fn,
    tokenizer,
    text,
    context=context,
    stride=stride or context,
    batch_size=batch_size,
    count_words=perplexity.is_word_level(corpus),
    progress=progress,
    label=f"perplexity {corpus}",
  )
  res["chars"] = len(text)
  return res


def run_suite(
  name: str,
  *,
  forward_fn: ForwardFn,
  generate_fn: GenerateFn | None,
  tokenizer: Any,
  context: int,
  data_root: str | Path | None,
  progress: Callable[[str], None] | None = print,
  batch_size: int = 16,
  ppl_texts: Mapping[str, str] | None = None,
  seed: int = 0,
  require_gpt2_protocol: bool = True,
  split: str = "",
  stride: int = 0,
  texts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
  """Runs the named suite; see module docstring. `split` ("test" | "valid", "" = the suite's) picks the
  split of WikiText-2/103 and PTB; `stride` > 0 overlaps perplexity windows; `texts` (name -> text)
  are extra texts scored whole for perplexity and bits/byte."""
  if name not in SUITES:
    raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
  spec = SUITES[name]
  gpt2_ok = str(getattr(tokenizer, "identity", None) or "").startswith(GPT2_IDENTITY_PREFIX)
  if any(c.gpt2_protocol for c in spec.corpora) and require_gpt2_protocol:
    check_tokenizer(tokenizer, GPT2_IDENTITY_PREFIX)  # fail before any compute
  say = progress or (lambda _: None)
  root = Path(data_root) if data_root is not None else None
  timings: dict[str, float] = {}
  result: dict[str, Any] = {
    "suite": name,
    "tokenizer": getattr(tokenizer, "identity", None),
    "context": context,
    "seed": seed,
  }

  t0 = time.perf_counter()
  say(f"[{name}] perplexity")
  result["perplexity"] = _perplexity_section(
    spec,
    forward_fn,
    tokenizer,
    context,
    root,
    batch_size,
    ppl_texts,
    gpt2_ok,
    say,
    split=split,
    stride=stride,
    texts=texts,
  )
  timings["perplexity"] = time.perf_counter() - t0

  result["tasks"] = run_tasks(
    name,
    forward_fn=forward_fn,
    generate_fn=generate_fn,
    tokenizer=tokenizer,
    context=context,
    data_root=root,
    batch_size=batch_size,
    seed=seed,
    progress=say,
    timings=timings,
  )

  t0 = time.perf_counter()
  say(f"[{name}] statefulness")
  result["statefulness"] = statefulness.run_probes(
    forward_fn,
    tokenizer,
    seed=seed,
    num_per_tier=spec.probes_per_tier,
    context=context,
    batch_size=batch_size,
    progress=say,
  )
  timings["statefulness"] = time.perf_counter() - t0
  result["seconds"] = timings
  return result


def _fmt(x: Any) -> str:
  if isinstance(x, float):
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
  return "-" if x is None else str(x)


def to_markdown(result: Mapping[str, Any]) -> str:
  """Markdown tables for a :func:`run_suite` result."""
  lines = [
    f"## Evaluation suite `{result.get('suite')}` (tokenizer `{result.get('tokenizer')}`, "
    f"context {result.get('context')})",
    "",
  ]
  skipped = []
  lines += [
    "| corpus | tokens | bytes | nats/token | perplexity | bits/byte | word ppl |",
    "|---|---|---|---|---|---|---|",
  ]
  for corpus, r in result.get("perplexity", {}).items():
    if "skipped" in r:
      skipped.append((f"perplexity {corpus}", r["skipped"]))
      continue
    lines.append(
      f"| {corpus} | {r['tokens']} | {r['bytes']} | {_fmt(r['nats_per_token'])} | "
      f"{_fmt(r['perplexity'])} | {_fmt(r['bits_per_byte'])} | "
      f"{_fmt(r.get('word_perplexity'))} |"
    )
  lines += ["", "| task | metric | value | n | shots | truncated | chance |", "|---|---|---|---|---|---|---|"]
  for task, r in result.get("tasks", {}).items():
    if "skipped" in r:
      skipped.append((task, r["skipped"]))
      continue
    for metric in tasks.TASKS[task].metrics if task in tasks.TASKS else ("acc",):
      lines.append(
        f"| {task} | {metric} | {_fmt(r[metric])} | {r['n']} | {r['num_fewshot']} | "
        f"{r['truncated']} | {_fmt(r.get('chance'))} |"
      )
  st = result.get("statefulness")
  if st:
    lines += ["", "| probe | acc | chance | n | truncated |", "|---|---|---|---|---|"]
    for tier, r in st["tiers"].items():
      lines.append(f"| {tier} | {_fmt(r['acc'])} | {_fmt(r['chance'])} | {r['n']} | {r['truncated']} |")
    for d, r in st["by_distance"].items():
      lines.append(
        f"| interrupted_recall @ {d} sentences | {_fmt(r['acc'])} | {_fmt(r['chance'])} | {r['n']} | {r['truncated']} |"
      )
    lines.append(f"| overall | {_fmt(st['overall_acc'])} | {_fmt(st['mean_chance'])} | {st['n']} | {st['truncated']} |")
  if skipped:
    lines += ["", "Skipped:"] + [f"- {what}: {why}" for what, why in skipped]
  return "\n".join(lines) + "\n"


def comparison_entry(result: Mapping[str, Any]) -> dict[str, Any]:
  """The ``tasks`` / ``statefulness`` / ``perplexity`` parts of a comparison-results run entry.

  Shapes follow ``modernlm_jax.compare.results``: ``tasks`` maps a task to its headline accuracy,
  ``statefulness`` holds ``by_tier``, ``by_distance`` (string keys) and ``score`` (overall
  probe accuracy). Skipped tasks and corpora are not in ``tasks`` / ``perplexity`` but in ``skipped``
  (``{"tasks": {task: reason}, "perplexity": {corpus: reason}}``), so a reader sees why they are absent.
  """
  entry: dict[str, Any] = {
    "tasks": {
      t: float(r[tasks.TASKS[t].headline])
      for t, r in result.get("tasks", {}).items()
      if "skipped" not in r and t in tasks.TASKS
    },
    "perplexity": {
      c: {"ppl": r["perplexity"], "bpb": r["bits_per_byte"]}
      for c, r in result.get("perplexity", {}).items()
      if "skipped" not in r
    },
    "skipped": {
      part: {name: str(r["skipped"]) for name, r in result.get(part, {}).items() if "skipped" in r}
      for part in ("tasks", "perplexity")
    },
  }
  st = result.get("statefulness")
  if st:
    entry["statefulness"] = {
      "by_tier": {t: r["acc"] for t, r in st["tiers"].items()},
      "by_distance": {str(d): r["acc"] for d, r in st["by_distance"].items()},
      "score": st["overall_acc"],
    }
  return entry

"""Statefulness probes: can the model use facts stated earlier in its context?

Probe families in three tiers, generated from templates with a seed and scored by log-likelihood
of the right answer against distractor answers (the model picks the highest-scoring continuation;
a tie among the top candidates earns 1/ties, so a model that cannot tell them apart scores chance):

Tier 1 (short-term memory), tier 2 (medium-term memory):

- ``short_term_recall``: "My favorite color is X." x3, then the question; pick X among
  ``num_choices`` colours.
- ``correction``: "I like A. Actually, I prefer B."; pick B against A (the stale fact).
- ``interrupted_recall``: "I'm going to C." then ``d`` unrelated sentences (``distances``,
  default 5/10/20/50), then the question; pick C among ``num_choices`` cities. Reported per
  distance as well.
- ``composition``: "P is a. Q is b." then "Who is older?" (or younger); pick the right name.

Tier 3 (conversational, ``eval/dialogue_probes.py``): multi-turn ``User:``/``Assistant:`` dialogues.

- ``persona_consistency``: a persona is set, several on-topic turns, then an off-topic request that
  names another role; the assistant's reply should still speak as its own persona.
- ``topic_threading``: a topic, turns about it, then "compare them to X"; the referent of "them"
  (the thread's topic, not the newly named X) must be resolved.

The statefulness score (``chance_corrected``) is (acc - chance) / (1 - chance) per probe family,
averaged so that every family counts once per tier and once overall (interrupted recall is one
family however many distances it runs), with its standard error over the items of every probe seed.

Public API
----------
``make_probes(seed=0, *, num_per_tier=20, distances=(5, 10, 20, 50), num_choices=4, turns=5)
    -> list[Probe]`` (``num_per_tier`` probes per distance for the interrupted tier).
``run_probes(forward_fn, tokenizer, *, probes=None, seed=0, num_per_tier=20,
             distances=(5, 10, 20, 50), num_choices=4, context=1024, batch_size=16,
             progress=None) -> dict``
    ``{"tiers": {family: {acc, n, chance, truncated}}, "by_distance": {d: {...}},
    "overall_acc", "mean_chance", "n", "truncated", "chance_corrected": {...}}``; ``seeds`` (a list)
    pools the probe sets of several seeds.
``chance_corrected(correct, chance, families, seeds) -> dict`` the score described above. Prompts longer than ``context`` are
    left-truncated and counted; a truncated fact can no longer be recalled, which is exactly
    what a fixed-window model faces.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from modernlm_jax.eval import dialogue_probes
from modernlm_jax.eval.fewshot.common import score_choices
from modernlm_jax.eval.scoring import ForwardFn, Progress

# Probe families (the historical name of a Probe's family is its `tier` field) and the tier of each.
TIERS = (
  "short_term_recall",
  "correction",
  "interrupted_recall",
  "composition",
  "persona_consistency",
  "topic_threading",
)
TIER_OF = {
  "short_term_recall": 1,
  "correction": 1,
  "interrupted_recall": 2,
  "composition": 2,
  "persona_consistency": 3,
  "topic_threading": 3,
}
DEFAULT_TURNS = 5
DEFAULT_DISTANCES = (5, 10, 20, 50)

COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown")
FRUITS = ("apples", "oranges", "bananas", "pears", "grapes", "cherries", "plums", "peaches")
CITIES = ("Paris", "London", "Tokyo", "Rome", "Berlin", "Madrid", "Cairo", "Sydney")
NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry")

# Distractor sentences are built from parts that mention no colour, fruit, city, name or age,
# so they interfere only through distance, never through content.
_SUBJECTS = (
  "The old farmer",
  "A small dog",
  "My neighbour",
  "The teacher",
  "A young girl",
  "The baker",
  "Our driver",
  "The quiet student",
)
_ACTIONS = (
  "read a long book",
  "walked to the market",
  "fixed the wooden fence",
  "cleaned the kitchen",
  "wrote a short letter",
  "watered the garden",
  "painted the door",
  "sang a quiet song",
)
_TIMES = (
  "in the morning",
  "after lunch",
  "on Sunday",
  "before dinner",
  "last winter",
  "during the storm",
  "at noon",
  "every evening",
)


@dataclasses.dataclass(frozen=True)
class Probe:
  tier: str
  context: str
  choices: tuple[str, ...]  # continuations, each with its leading space
  answer: int  # index of the right choice
  distance: int | None = None

  @property
  def chance(self) -> float:
    return 1.0 / len(self.choices)


def distractor_sentences(rng: random.Random, count: int) -> list[str]:
  combos = [(s, a, t) for s in _SUBJECTS for a in _ACTIONS for t in _TIMES]
  return [f"{s} {a} {t}." for s, a, t in rng.sample(combos, count)]


def _options(rng: random.Random, pool: Sequence[str], answer: str, k: int) -> tuple[tuple[str, ...], int]:
  others = rng.sample([p for p in pool if p != answer], k - 1)
  opts = [answer, *others]
  rng.shuffle(opts)
  return tuple(" " + o for o in opts), opts.index(answer)


def _short_term(rng: random.Random, k: int) -> Probe:
  color = rng.choice(COLORS)
  choices, answer = _options(rng, COLORS, color, k)
  ctx = f"My favorite color is {color}. " * 3 + "What's my favorite color? Your favorite color is"
  return Probe("short_term_recall", ctx, choices, answer)


def _correction(rng: random.Random) -> Probe:
  old, new = rng.sample(FRUITS, 2)
  choices, answer = _options(rng, (old, new), new, 2)
  ctx = f"I like {old}. Actually, I prefer {new}. What do I like? You like"
  return Probe("correction", ctx, choices, answer)


def _interrupted(rng: random.Random, k: int, distance: int) -> Probe:
  city = rng.choice(CITIES)
  choices, answer = _options(rng, CITIES, city, k)
  middle = " ".join(distractor_sentences(rng, distance))
  ctx = f"I'm going to {city}. {middle} Where am I going? You are going to"
  return Probe("interrupted_recall", ctx, choices, answer, distance)


def _composition(rng: random.Random) -> Probe:
  p, q = rng.sample(NAMES, 2)
  a, b = rng.sample(range(18, 80), 2)
  ask_older = rng.random() < 0.5
  right = p if (a > b) == ask_older else q
  choices, answer = _options(rng, (p, q), right, 2)
  word = "older" if ask_older else "younger"
  ctx = f"{p} is {a} years old. {q} is {b} years old. Who is {word}? The {word} one is"
  return Probe("composition", ctx, choices, answer)


def _persona(rng: random.Random, k: int, turns: int) -> Probe:
  ctx, choices, answer = dialogue_probes.persona_dialogue(rng, k, turns)
  return Probe("persona_consistency", ctx, choices, answer)


def _topic(rng: random.Random, k: int, turns: int) -> Probe:
  ctx, choices, answer = dialogue_probes.topic_dialogue(rng, k, turns)
  return Probe("topic_threading", ctx, choices, answer)


def make_probes(
  seed: int = 0,
  *,
  num_per_tier: int = 20,
  distances: Sequence[int] = DEFAULT_DISTANCES,
  num_choices: int = 4,
  turns: int = DEFAULT_TURNS,
) -> list[Probe]:
  """Deterministic probe set for ``seed``; see module docstring."""
  if not 2 <= num_choices <= len(COLORS):
    raise ValueError(f"num_choices must be in [2, {len(COLORS)}], got {num_choices}")
  if turns < 1:
    raise ValueError(f"turns (on-topic dialogue turns of the tier-3 probes) must be >= 1, got {turns}")
  max_distance = len(_SUBJECTS) * len(_ACTIONS) * len(_TIMES)
  if any(not 0 <= d <= max_distance for d in distances):
    raise ValueError(f"distances must be in [0, {max_distance}], got {list(distances)}")
  rng = random.Random(seed)
  probes = [_short_term(rng, num_choices) for _ in range(num_per_tier)]
  probes += [_correction(rng) for _ in range(num_per_tier)]
  probes += [_interrupted(rng, num_choices, d) for d in distances for _ in range(num_per_tier)]
  probes += [_composition(rng) for _ in range(num_per_tier)]
  # Tier 3 draws from its own stream, so adding it left the tier 1-2 probes of every seed unchanged.
  rng3 = random.Random(f"tier3-{seed}")
  probes += [_persona(rng3, num_choices, turns) for _ in range(num_per_tier)]
  probes += [_topic(rng3, num_choices, turns) for _ in range(num_per_tier)]
  return probes


def credit(logprobs: Sequence[float], answer: int, tol: float = 1e-9) -> float:
  """1 if the answer scores highest, 1/k if it ties k-way for the top, else 0 (random tie-breaking)."""
  lp = np.asarray(logprobs, np.float64)
  top = lp.max()
  tied = np.abs(lp - top) <= tol * max(1.0, abs(top))
  return float(tied[answer]) / float(tied.sum())


def _mean_se(x: np.ndarray) -> tuple[float, float]:
  return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0


def chance_corrected(
  correct: Sequence[float], chance: Sequence[float], families: Sequence[str], seeds: Sequence[int] | None = None
) -> dict[str, Any]:
  """(acc - chance) / (1 - chance) per family, per tier and overall, each family weighted once.

  An item's corrected score is (c - chance) / (1 - chance) (1 when right, -chance/(1-chance)
  when wrong), so a family's score is the mean over its items and its standard error is that of
  a mean over items (pooled over every probe seed). A tier and the overall score are plain means
  over their families; their standard errors combine the families' as independent estimates.
  """
  c, ch = np.asarray(correct, np.float64), np.asarray(chance, np.float64)
  fams = np.asarray(families)
  if not (c.size == ch.size == fams.size) or c.size == 0:
    raise ValueError("correct, chance and families must be equally long and non-empty")
  if np.any(ch >= 1.0):
    raise ValueError("a probe with chance 1 (a single candidate) cannot be chance-corrected")
  item = (c - ch) / (1.0 - ch)
  by_family: dict[str, dict[str, float]] = {}
  for fam in dict.fromkeys(fams.tolist()):
    mean, se = _mean_se(item[fams == fam])
    by_family[fam] = {"score": mean, "se": se, "n": int((fams == fam).sum()), "tier": TIER_OF.get(fam, 0)}

  def combine(names: list[str]) -> dict[str, float]:
    scores = np.array([by_family[f]["score"] for f in names])
    ses = np.array([by_family[f]["se"] for f in names])
    return {"score": float(scores.mean()), "se": float(np.sqrt((ses**2).sum()) / len(names)), "families": len(names)}

  tiers = {}
  for tier in sorted({v["tier"] for v in by_family.values()}):
    tiers[str(tier)] = combine([f for f, v in by_family.items() if v["tier"] == tier])
  out: dict[str, Any] = {"families": by_family, "tiers": tiers, "overall": combine(list(by_family))}
  if seeds is not None:
    sd = np.asarray(seeds)
    per_seed = {}
    for s in dict.fromkeys(sd.tolist()):
      sel = sd == s
      fam_means = [item[sel & (fams == f)].mean() for f in by_family if np.any(sel & (fams == f))]
      per_seed[str(s)] = float(np.mean(fam_means))
    out["by_seed"] = per_seed
  return out


def _summary(correct: np.ndarray, chance: np.ndarray, truncated: np.ndarray) -> dict[str, float]:
  return {
    "acc": float(correct.mean()),
    "n": int(correct.size),
    "chance": float(chance.mean()),
    "truncated": int(truncated.sum()),
  }


def run_probes(
  forward_fn: ForwardFn,
  tokenizer: Any,
  *,
  probes: Sequence[Probe] | None = None,
  seed: int = 0,
  num_per_tier: int = 20,
  distances: Sequence[int] = DEFAULT_DISTANCES,
  num_choices: int = 4,
  context: int = 1024,
  batch_size: int = 16,
  progress: Progress = None,
  seeds: Sequence[int] | None = None,
  turns: int = DEFAULT_TURNS,
) -> dict[str, Any]:
  """Accuracy per family and per distance, with chance levels and the chance-corrected score."""
  probe_seeds: list[int] = []
  if probes is None:
    probes = []
    for s in list(seeds) if seeds else [seed]:
      batch = make_probes(s, num_per_tier=num_per_tier, distances=distances, num_choices=num_choices, turns=turns)
      probes += batch
      probe_seeds += [s] * len(batch)
  if not probes:
    raise ValueError("no probes to run")
  lps, _, truncated = score_choices(
    forward_fn,
    tokenizer,
    [p.context for p in probes],
    [p.choices for p in probes],
    context=context,
    batch_size=batch_size,
    progress=progress,
    label="statefulness",
  )
  correct = np.array([credit(lp, p.answer) for p, lp in zip(probes, lps)])
  chance = np.array([p.chance for p in probes])
  tiers = [p.tier for p in probes]
  result: dict[str, Any] = {"tiers": {}, "by_distance": {}}
  for tier in TIERS:
    sel = np.array([t == tier for t in tiers])
    if sel.any():
      result["tiers"][tier] = _summary(correct[sel], chance[sel], truncated[sel])
  for d in sorted({p.distance for p in probes if p.distance is not None}):
    sel = np.array([p.distance == d for p in probes])
    result["by_distance"][d] = _summary(correct[sel], chance[sel], truncated[sel])
  result.update(
    overall_acc=float(correct.mean()),
    mean_chance=float(chance.mean()),
    n=int(correct.size),
    truncated=int(truncated.sum()),
  )
  result["chance_corrected"] = chance_corrected(correct, chance, tiers, probe_seeds or None)
  return result

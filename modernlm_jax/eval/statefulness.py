"""Statefulness probes: can the model use facts stated earlier in its context?

Four tiers, generated from templates with a seed and scored by log-likelihood of the right
answer against distractor answers (the model picks the highest-scoring continuation):

- ``short_term_recall``: "My favorite color is X." x3, then the question; pick X among
  ``num_choices`` colours.
- ``correction``: "I like A. Actually, I prefer B."; pick B against A (the stale fact).
- ``interrupted_recall``: "I'm going to C." then ``d`` unrelated sentences (``distances``,
  default 5/10/20/50), then the question; pick C among ``num_choices`` cities. Reported per
  distance as well.
- ``composition``: "P is a. Q is b." then "Who is older?" (or younger); pick the right name.

Public API
----------
``make_probes(seed=0, *, num_per_tier=20, distances=(5, 10, 20, 50), num_choices=4)
    -> list[Probe]`` (``num_per_tier`` probes per distance for the interrupted tier).
``run_probes(forward_fn, tokenizer, *, probes=None, seed=0, num_per_tier=20,
             distances=(5, 10, 20, 50), num_choices=4, context=1024, batch_size=16,
             progress=None) -> dict``
    ``{"tiers": {tier: {acc, n, chance, truncated}}, "by_distance": {d: {...}},
    "overall_acc", "mean_chance", "n", "truncated"}``. Prompts longer than ``context`` are
    left-truncated and counted; a truncated fact can no longer be recalled, which is exactly
    what a fixed-window model faces.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from modernlm_jax.eval.fewshot.common import score_choices
from modernlm_jax.eval.scoring import ForwardFn, Progress

TIERS = ("short_term_recall", "correction", "interrupted_recall", "composition")
DEFAULT_DISTANCES = (5, 10, 20, 50)

COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown")
FRUITS = ("apples", "oranges", "bananas", "pears", "grapes", "cherries", "plums", "peaches")
CITIES = ("Paris", "London", "Tokyo", "Rome", "Berlin", "Madrid", "Cairo", "Sydney")
NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry")

# Distractor sentences are built from parts that mention no colour, fruit, city, name or age,
# so they interfere only through distance, never through content.
_SUBJECTS = ("The old farmer", "A small dog", "My neighbour", "The teacher", "A young girl",
             "The baker", "Our driver", "The quiet student")
_ACTIONS = ("read a long book", "walked to the market", "fixed the wooden fence", "cleaned the kitchen",
            "wrote a short letter", "watered the garden", "painted the door", "sang a quiet song")
_TIMES = ("in the morning", "after lunch", "on Sunday", "before dinner", "last winter",
          "during the storm", "at noon", "every evening")


@dataclasses.dataclass(frozen=True)
class Probe:
    tier: str
    context: str
    choices: tuple[str, ...]   # continuations, each with its leading space
    answer: int                # index of the right choice
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


def make_probes(seed: int = 0, *, num_per_tier: int = 20,
                distances: Sequence[int] = DEFAULT_DISTANCES, num_choices: int = 4) -> list[Probe]:
    """Deterministic probe set for ``seed``; see module docstring."""
    if not 2 <= num_choices <= len(COLORS):
        raise ValueError(f"num_choices must be in [2, {len(COLORS)}], got {num_choices}")
    max_distance = len(_SUBJECTS) * len(_ACTIONS) * len(_TIMES)
    if any(not 0 <= d <= max_distance for d in distances):
        raise ValueError(f"distances must be in [0, {max_distance}], got {list(distances)}")
    rng = random.Random(seed)
    probes = [_short_term(rng, num_choices) for _ in range(num_per_tier)]
    probes += [_correction(rng) for _ in range(num_per_tier)]
    probes += [_interrupted(rng, num_choices, d) for d in distances for _ in range(num_per_tier)]
    probes += [_composition(rng) for _ in range(num_per_tier)]
    return probes


def _summary(correct: np.ndarray, chance: np.ndarray, truncated: np.ndarray) -> dict[str, float]:
    return {"acc": float(correct.mean()), "n": int(correct.size), "chance": float(chance.mean()),
            "truncated": int(truncated.sum())}


def run_probes(forward_fn: ForwardFn, tokenizer: Any, *, probes: Sequence[Probe] | None = None,
               seed: int = 0, num_per_tier: int = 20, distances: Sequence[int] = DEFAULT_DISTANCES,
               num_choices: int = 4, context: int = 1024, batch_size: int = 16,
               progress: Progress = None) -> dict[str, Any]:
    """Accuracy per tier and per distance, with chance levels; see module docstring."""
    if probes is None:
        probes = make_probes(seed, num_per_tier=num_per_tier, distances=distances,
                             num_choices=num_choices)
    if not probes:
        raise ValueError("no probes to run")
    lps, _, truncated = score_choices(forward_fn, tokenizer, [p.context for p in probes],
                              [p.choices for p in probes], context=context, batch_size=batch_size,
                              progress=progress, label="statefulness")
    correct = np.array([int(np.argmax(lp)) == p.answer for p, lp in zip(probes, lps)])
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
    result.update(overall_acc=float(correct.mean()), mean_chance=float(chance.mean()),
                  n=int(correct.size), truncated=int(truncated.sum()))
    return result

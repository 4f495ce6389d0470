"""Seed-level statistics for the matched comparison: mean ± std, significance, relative deltas.

The matched-comparison protocol repeats every run over several seeds and calls a difference
*statistically significant* when ``|mean1 - mean2| > 2 * sqrt(std1**2 + std2**2)``. Separately it
names *practically meaningful* improvement sizes per metric kind (loss/perplexity > 10 % relative,
accuracy > 5 points absolute, speed > 20 % faster, memory > 30 % less); both are implemented here
so a report can mark them independently.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

SIGNIFICANCE_SIGMAS = 2.0

# Minimum size of an improvement the protocol treats as meaningful, keyed by metric kind.
PRACTICAL_IMPROVEMENT = {
  "loss": 0.10,  # relative reduction of loss or perplexity
  "accuracy": 0.05,  # absolute increase of an accuracy in [0, 1]
  "speed": 0.20,  # relative increase of throughput (tokens/s)
  "memory": 0.30,  # relative reduction of peak memory
}


@dataclass(frozen=True)
class Summary:
  """Mean and sample standard deviation of one metric over seeds."""

  mean: float
  std: float
  n: int

  def as_dict(self) -> dict:
    return asdict(self)

  def format(self, digits: int = 3) -> str:
    if self.n == 1:
      return f"{self.mean:.{digits}f} (n=1)"
    return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


def summarize(values: Iterable[float]) -> Summary:
  """Mean ± sample std (ddof=1) of finite values; a single value has std 0 and n=1.

  Non-finite values are rejected rather than silently dropped: a NaN loss means a failed run,
  and failed runs must be excluded (or marked failed) before aggregation.
  """
  arr = np.asarray([float(v) for v in values], dtype=np.float64)
  if arr.size == 0:
    raise ValueError("summarize() got no values; filter out metrics that are missing before summarizing")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"summarize() got non-finite values {arr.tolist()}; mark those runs as failed instead")
  std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
  return Summary(mean=float(np.mean(arr)), std=std, n=int(arr.size))


def is_significant(a: Summary, b: Summary, sigmas: float = SIGNIFICANCE_SIGMAS) -> bool | None:
  """The protocol's rule ``|m1 - m2| > 2·sqrt(σ1² + σ2²)``; None when either side has one seed.

  With a single seed the std is undefined, and treating it as 0 would call every difference
  significant, so the question is left open instead.
  """
  if a.n < 2 or b.n < 2:
    return None
  return abs(a.mean - b.mean) > sigmas * math.sqrt(a.std**2 + b.std**2)


def relative_delta(candidate: float, baseline: float) -> float:
  """(candidate - baseline) / |baseline|; +0.05 means 5 % larger than the baseline."""
  if baseline == 0:
    raise ValueError("relative_delta() needs a non-zero baseline; compare absolute differences for zero baselines")
  return (candidate - baseline) / abs(baseline)


def practical_improvement(kind: str, candidate: float, baseline: float) -> float:
  """Improvement of candidate over baseline in the unit the protocol thresholds use for `kind`.

  Positive means the candidate is better: loss → relative reduction, accuracy → absolute gain,
  speed → relative throughput gain, memory → relative reduction.
  """
  if kind == "loss":
    return -relative_delta(candidate, baseline)
  if kind == "accuracy":
    return candidate - baseline
  if kind == "speed":
    return relative_delta(candidate, baseline)
  if kind == "memory":
    return -relative_delta(candidate, baseline)
  raise ValueError(f"unknown metric kind {kind!r}; use one of {sorted(PRACTICAL_IMPROVEMENT)}")


def is_practically_meaningful(kind: str, candidate: float, baseline: float) -> bool:
  """True when the improvement exceeds the protocol's meaningful-improvement size for `kind`."""
  return practical_improvement(kind, candidate, baseline) > PRACTICAL_IMPROVEMENT[kind]


def significance_mark(candidate: Summary, baseline: Summary, kind: str) -> str:
  """Short report mark: '*' statistically significant, '†' practically meaningful improvement.

  '*' is direction-free (a significant regression is also marked); '†' only marks improvements.
  """
  mark = ""
  if is_significant(candidate, baseline):
    mark += "*"
  if kind in PRACTICAL_IMPROVEMENT and baseline.mean != 0:
    if is_practically_meaningful(kind, candidate.mean, baseline.mean):
      mark += "†"
  return mark

"""results.json: the one file a matched comparison writes and every report is regenerated from.

Schema (version 1). JSON, UTF-8; missing values are ``null`` (NaN/inf are not valid JSON and are
rejected: a diverged run is ``status: "failed"`` with an ``error``)::

    {
      "schema_version": 1,
      "protocol": {
        "data_source":    str,          # e.g. "text:/data/tinystories/*.txt"
        "token_budget":   int,          # training tokens per run
        "schedule":       str | dict,   # e.g. {"kind": "cosine", "warmup_steps": 2000, "max_lr": 3e-4}
        "batch_size":     int,
        "seq_len":        int,
        "seeds":          [int, ...],
        "tokenizer":      str,          # tokenizer identity, identical for all families
        "baseline_family": str,         # optional, default "gpt2"
        "decision_scale": str,          # optional; default = largest scale both families finished
        "hardware":       str,          # optional, e.g. "1x H100, bfloat16"
        ...                             # further keys are kept and printed
      },
      "runs": [
        {
          "family": str,                # "gpt2", "modern", "recurrent", ...
          "scale":  str,                # preset label, e.g. "8M"
          "seed":   int,
          "params": int,                # counted parameters (N of the scaling law)
          "status": "ok" | "failed",
          "error":  str | null,         # required (non-empty) when failed
          # everything below is required for "ok" runs except where marked optional
          "curves": {
            "tokens":     [int, ...],   # tokens seen at each logged point
            "train_loss": [float|null, ...],   # same length as tokens
            "val_loss":   [float|null, ...],   # same length as val_tokens if given, else as tokens
            "val_tokens": [int, ...]           # optional: val has its own x axis
          },
          "final": {"val_loss": float, "ppl": float, "bpb": float|null, "grad_norm_init": float|null, ...},
          "tasks": {name: float, ...},                                     # optional, accuracies in [0, 1]
          "tokenizer": str,                                                # optional: the run's tokenizer identity
          "perplexity": {corpus: {"bpb": float, "ppl": float, "nats_per_token": float,
                                  "tokens": int, "bytes": int, "context": int}},   # optional (WikiText-2/103, PTB)
          "skipped": {"tasks": {name: reason}, "perplexity": {corpus: reason}},  # optional: what could not run, why
          "data": {"tokens_seen": int, "tokens_per_epoch": int|null, "epochs": float|null},  # optional
          "statefulness": {                                                # optional
            "by_tier":     {tier: float, ...},                             # accuracy per probe tier
            "by_distance": {"<distance>": float, ...},                     # accuracy vs distance (tokens/turns)
            "score":       float,                                          # overall score, higher is better
            "chance":      float|null                                      # optional: chance-level score
          },
          "inference": {                                                   # optional
            "prefill_s":      float,    # median seconds for one prefill at the protocol length
            "decode_tok_s":   float,    # decode tokens per second (batch 1)
            "peak_mem_bytes": int,
            "mem_kind":       "device_peak_bytes_in_use" | "process_peak_rss",
            "context_scaling": {"lengths": [int], "times": [float], "exponent": float,
                                "mem_bytes": [int|null] (optional), "mem_kind": str (optional)}
          }
        }, ...
      ],
      "smoke": {                                                           # optional
        "scale": str,
        "data_fraction": {"fraction": float, "by_family": {family: {"tokens": [...], "train_loss": [...]}}},
        "overfit":       {"size": int, "unit": "examples" | "tokens", "by_family": {family: {"final_loss": float}}},
        "grad_norm":     {"by_family": {family: float}},
        "gate":          bool,          # optional, default true: a failed check makes the verdict FIX FIRST
        "stopped_before_training": bool,   # optional: the gate stopped the comparison before full training
        "errors":        {family: str}  # optional: a check that could not run for a family, and why
      }
    }

`(family, scale, seed)` identifies a run and must be unique.

Optional run keys `budget`, `long_context`, `dialogue`, `statefulness.chance_corrected` and the top-level
`reverse_test` are documented in `modernlm_jax.compare.protocol_report`, which renders them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from modernlm_jax import paths

SCHEMA_VERSION = 1
DEFAULT_BASELINE = "gpt2"
MEM_KINDS = ("device_peak_bytes_in_use", "process_peak_rss")
REQUIRED_PROTOCOL = ("data_source", "token_budget", "schedule", "batch_size", "seq_len", "seeds", "tokenizer")


# --------------------------------------------------------------------------- build


def new_results(protocol: Mapping[str, Any]) -> dict:
  """An empty results dict for a protocol; raises if the protocol misses a required key."""
  missing = [k for k in REQUIRED_PROTOCOL if k not in protocol]
  if missing:
    raise ValueError(f"protocol is missing {missing}; required keys are {list(REQUIRED_PROTOCOL)}")
  return {"schema_version": SCHEMA_VERSION, "protocol": dict(protocol), "runs": []}


def make_run(
  family: str,
  scale: str,
  seed: int,
  params: int,
  *,
  curves: Mapping | None = None,
  final: Mapping | None = None,
  tasks: Mapping | None = None,
  statefulness: Mapping | None = None,
  inference: Mapping | None = None,
  error: str | None = None,
  **optional: Any,
) -> dict:
  """One run entry; passing `error` marks it failed (whatever partial data is also given is kept)."""
  run: dict[str, Any] = {
    "family": family,
    "scale": scale,
    "seed": int(seed),
    "params": int(params),
    "status": "failed" if error else "ok",
    "error": error,
  }
  for key, value in (
    ("curves", curves),
    ("final", final),
    ("tasks", tasks),
    ("statefulness", statefulness),
    ("inference", inference),
  ):
    if value is not None:
      run[key] = copy.deepcopy(dict(value))
  unknown = set(optional) - set(OPTIONAL_RUN_KEYS)
  if unknown:
    raise ValueError(f"make_run got unknown keys {sorted(unknown)}; optional keys are {list(OPTIONAL_RUN_KEYS)}")
  for key, value in optional.items():
    if value is not None:
      run[key] = copy.deepcopy(value)
  return run


OPTIONAL_RUN_KEYS = ("tokenizer", "perplexity", "skipped", "data")


def add_run(results: dict, run: Mapping) -> dict:
  """Appends (or replaces, same family/scale/seed) a run after validating it; returns results."""
  problems = _validate_run(run, "run")
  if problems:
    raise ValueError("invalid run entry:\n  " + "\n  ".join(problems))
  key = run_key(run)
  results["runs"] = [r for r in results.get("runs", []) if run_key(r) != key] + [copy.deepcopy(dict(run))]
  return results


def final_from_perplexity(ppl_result: Mapping[str, Any], **extra: float | None) -> dict:
  """`final` entry from `eval.perplexity.evaluate_*` output (nats_per_token, perplexity, bits_per_byte)."""
  missing = [k for k in ("nats_per_token", "perplexity") if k not in ppl_result]
  if missing:
    raise ValueError(f"perplexity result lacks {missing}; pass the dict evaluate_stream/evaluate_text returns")
  return {
    "val_loss": float(ppl_result["nats_per_token"]),
    "ppl": float(ppl_result["perplexity"]),
    "bpb": None if ppl_result.get("bits_per_byte") is None else float(ppl_result["bits_per_byte"]),
    **{k: (None if v is None else float(v)) for k, v in extra.items()},
  }


def statefulness_entry(probe_result: Mapping[str, Any]) -> dict:
  """`statefulness` entry from `eval.statefulness.run_probes` output.

  score = overall accuracy (the ratio the decision uses); chance = mean chance accuracy, kept so
  a reader can tell a recall advantage from two models both sitting at chance.
  """
  if "overall_acc" not in probe_result or "tiers" not in probe_result:
    raise ValueError("probe result lacks overall_acc/tiers; pass the dict run_probes returns")
  return {
    "by_tier": {t: float(v["acc"]) for t, v in probe_result["tiers"].items()},
    "by_distance": {str(d): float(v["acc"]) for d, v in (probe_result.get("by_distance") or {}).items()},
    "score": float(probe_result["overall_acc"]),
    "chance": None if probe_result.get("mean_chance") is None else float(probe_result["mean_chance"]),
  }


def run_key(run: Mapping) -> tuple[str, str, int]:
  return (run.get("family"), run.get("scale"), run.get("seed"))


# --------------------------------------------------------------------------- validate


def _is_num(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _non_finite_paths(x: Any, path: str) -> list[str]:
  if isinstance(x, float) and not math.isfinite(x):
    return [path]
  if isinstance(x, Mapping):
    return [p for k, v in x.items() for p in _non_finite_paths(v, f"{path}.{k}")]
  if isinstance(x, (list, tuple)):
    return [p for i, v in enumerate(x) for p in _non_finite_paths(v, f"{path}[{i}]")]
  return []


def _check_series(values: Any, where: str, allow_null: bool) -> list[str]:
  if not isinstance(values, list):
    return [f"{where} must be a list"]
  bad = [i for i, v in enumerate(values) if not (_is_num(v) or (allow_null and v is None))]
  return [f"{where} has non-numeric entries at {bad[:5]}; store Python floats/ints (array.tolist())"] if bad else []


def _validate_curves(curves: Any, where: str) -> list[str]:
  if not isinstance(curves, Mapping):
    return [f"{where} must be an object with tokens/train_loss/val_loss"]
  problems = []
  for key in ("tokens", "train_loss", "val_loss"):
    if key not in curves:
      problems.append(f"{where}.{key} is missing")
  if problems:
    return problems
  problems += _check_series(curves["tokens"], f"{where}.tokens", allow_null=False)
  problems += _check_series(curves["train_loss"], f"{where}.train_loss", allow_null=True)
  problems += _check_series(curves["val_loss"], f"{where}.val_loss", allow_null=True)
  if problems:
    return problems
  if len(curves["train_loss"]) != len(curves["tokens"]):
    problems.append(f"{where}.train_loss has {len(curves['train_loss'])} points but tokens has {len(curves['tokens'])}")
  val_axis = "val_tokens" if "val_tokens" in curves else "tokens"
  if val_axis == "val_tokens":
    problems += _check_series(curves["val_tokens"], f"{where}.val_tokens", allow_null=False)
  if not problems and len(curves["val_loss"]) != len(curves[val_axis]):
    problems.append(f"{where}.val_loss has {len(curves['val_loss'])} points but {val_axis} has {len(curves[val_axis])}")
  for axis in ("tokens", "val_tokens"):
    seq = curves.get(axis)
    if isinstance(seq, list) and any(b < a for a, b in zip(seq, seq[1:]) if _is_num(a) and _is_num(b)):
      problems.append(f"{where}.{axis} must be non-decreasing")
  return problems


def _validate_run(run: Any, where: str) -> list[str]:
  if not isinstance(run, Mapping):
    return [f"{where} must be an object"]
  problems = []
  for key, typ in (("family", str), ("scale", str)):
    if not isinstance(run.get(key), typ) or not run.get(key):
      problems.append(f"{where}.{key} must be a non-empty string")
  if not isinstance(run.get("seed"), int) or isinstance(run.get("seed"), bool):
    problems.append(f"{where}.seed must be an integer")
  if not isinstance(run.get("params"), int) or isinstance(run.get("params"), bool) or run.get("params", 0) <= 0:
    problems.append(f"{where}.params must be a positive integer (the counted parameters)")
  status = run.get("status")
  if status not in ("ok", "failed"):
    problems.append(f"{where}.status must be 'ok' or 'failed', got {status!r}")
  if status == "failed":
    if not isinstance(run.get("error"), str) or not run.get("error"):
      problems.append(f"{where}.error must say why the run failed")
    return problems + [f"{where}: {p} is NaN/inf; store null instead" for p in _non_finite_paths(run, "")]
  if status == "ok" and run.get("error"):
    problems.append(f"{where} has status 'ok' but an error; set status to 'failed' or clear the error")
  problems += _validate_curves(run.get("curves"), f"{where}.curves")
  final = run.get("final")
  if not isinstance(final, Mapping):
    problems.append(f"{where}.final must be an object with val_loss and ppl")
  else:
    for key in ("val_loss", "ppl"):
      if not _is_num(final.get(key)):
        problems.append(f"{where}.final.{key} must be a number")
  if "tasks" in run and not (
    isinstance(run["tasks"], Mapping) and all(_is_num(v) or v is None for v in run["tasks"].values())
  ):
    problems.append(f"{where}.tasks must map task names to numbers")
  st = run.get("statefulness")
  if st is not None:
    if not isinstance(st, Mapping) or not _is_num(st.get("score")):
      problems.append(f"{where}.statefulness.score must be a number")
    else:
      for key in ("by_tier", "by_distance"):
        if key in st and not (isinstance(st[key], Mapping) and all(_is_num(v) for v in st[key].values())):
          problems.append(f"{where}.statefulness.{key} must map names to numbers")
      for d in st.get("by_distance") or {}:
        try:
          float(d)
        except ValueError:
          problems.append(f"{where}.statefulness.by_distance key {d!r} must be a number written as a string")
  inf = run.get("inference")
  if inf is not None:
    problems += _validate_inference(inf, f"{where}.inference")
  problems += _validate_optional(run, where)
  problems += [f"{where}: {p} is NaN/inf; store null instead" for p in _non_finite_paths(run, "")]
  return problems


def _validate_optional(run: Mapping, where: str) -> list[str]:
  problems = []
  if "tokenizer" in run and not isinstance(run["tokenizer"], str):
    problems.append(f"{where}.tokenizer must be the tokenizer identity string")
  ppl = run.get("perplexity")
  if ppl is not None:
    if not isinstance(ppl, Mapping) or not all(
      isinstance(v, Mapping) and all(_is_num(x) or x is None for x in v.values()) for v in ppl.values()
    ):
      problems.append(f"{where}.perplexity must map corpus names to {{bpb, ppl, ...: number}}")
  sk = run.get("skipped")
  if sk is not None:
    if not isinstance(sk, Mapping) or not all(
      isinstance(v, Mapping) and all(isinstance(x, str) and x for x in v.values()) for v in sk.values()
    ):
      problems.append(f"{where}.skipped must map a part (tasks, perplexity) to {{name: non-empty reason}}")
  data = run.get("data")
  if data is not None:
    if not isinstance(data, Mapping) or not all(_is_num(v) or v is None for v in data.values()):
      problems.append(f"{where}.data must map tokens_seen / tokens_per_epoch / epochs to numbers or null")
  return problems


def _validate_inference(inf: Any, where: str) -> list[str]:
  if not isinstance(inf, Mapping):
    return [f"{where} must be an object"]
  problems = []
  for key in ("prefill_s", "decode_tok_s", "peak_mem_bytes"):
    if key in inf and inf[key] is not None and (not _is_num(inf[key]) or inf[key] <= 0):
      problems.append(f"{where}.{key} must be a positive number or null")
  if inf.get("peak_mem_bytes") is not None and inf.get("mem_kind") not in MEM_KINDS:
    problems.append(f"{where}.mem_kind must be one of {list(MEM_KINDS)} when peak_mem_bytes is given")
  cs = inf.get("context_scaling")
  if cs is not None:
    if not isinstance(cs, Mapping):
      problems.append(f"{where}.context_scaling must be an object")
    else:
      problems += _check_series(cs.get("lengths"), f"{where}.context_scaling.lengths", allow_null=False)
      problems += _check_series(cs.get("times"), f"{where}.context_scaling.times", allow_null=False)
      if not problems and len(cs["lengths"]) != len(cs["times"]):
        problems.append(f"{where}.context_scaling: lengths and times differ in length")
      if "mem_bytes" in cs:
        problems += _check_series(cs["mem_bytes"], f"{where}.context_scaling.mem_bytes", allow_null=True)
        if isinstance(cs.get("mem_bytes"), list) and len(cs["mem_bytes"]) != len(cs.get("lengths") or []):
          problems.append(f"{where}.context_scaling: mem_bytes and lengths differ in length")
  return problems


def _validate_smoke(smoke: Any) -> list[str]:
  if not isinstance(smoke, Mapping):
    return ["smoke must be an object"]
  problems = []
  for fam, c in ((smoke.get("data_fraction") or {}).get("by_family") or {}).items():
    where = f"smoke.data_fraction.by_family.{fam}"
    if not isinstance(c, Mapping):
      problems.append(f"{where} must have tokens and train_loss")
      continue
    problems += _check_series(c.get("tokens"), f"{where}.tokens", allow_null=False)
    problems += _check_series(c.get("train_loss"), f"{where}.train_loss", allow_null=False)
    if (
      isinstance(c.get("tokens"), list)
      and isinstance(c.get("train_loss"), list)
      and len(c["tokens"]) != len(c["train_loss"])
    ):
      problems.append(f"{where}: tokens and train_loss differ in length")
  for fam, v in ((smoke.get("overfit") or {}).get("by_family") or {}).items():
    if not (isinstance(v, Mapping) and _is_num(v.get("final_loss"))):
      problems.append(f"smoke.overfit.by_family.{fam}.final_loss must be a number")
  for fam, v in ((smoke.get("grad_norm") or {}).get("by_family") or {}).items():
    if not _is_num(v):
      problems.append(f"smoke.grad_norm.by_family.{fam} must be a number")
  return problems + [f"smoke: {p} is NaN/inf; store null instead" for p in _non_finite_paths(smoke, "")]


def validate(results: Any) -> list[str]:
  """Every schema problem found, as messages naming the field and the fix; [] when valid."""
  if not isinstance(results, Mapping):
    return ["results must be a JSON object"]
  problems = []
  if results.get("schema_version") != SCHEMA_VERSION:
    problems.append(f"schema_version must be {SCHEMA_VERSION}, got {results.get('schema_version')!r}")
  protocol = results.get("protocol")
  if not isinstance(protocol, Mapping):
    problems.append("protocol must be an object describing data, budget, schedule, batch, seq len, seeds, tokenizer")
  else:
    missing = [k for k in REQUIRED_PROTOCOL if k not in protocol]
    if missing:
      problems.append(f"protocol is missing {missing}")
    if "seeds" in protocol and not (
      isinstance(protocol["seeds"], list) and all(isinstance(s, int) for s in protocol["seeds"])
    ):
      problems.append("protocol.seeds must be a list of integers")
  runs = results.get("runs")
  if not isinstance(runs, list):
    problems.append("runs must be a list (empty is allowed)")
    runs = []
  seen = set()
  for i, run in enumerate(runs):
    problems += _validate_run(run, f"runs[{i}]")
    if isinstance(run, Mapping):
      key = run_key(run)
      if key in seen:
        problems.append(f"runs[{i}] repeats family/scale/seed {key}; keep one entry per run")
      seen.add(key)
  if results.get("smoke") is not None:
    problems += _validate_smoke(results["smoke"])
  return problems


# --------------------------------------------------------------------------- load / save


def save(results: Mapping, path: str | os.PathLike) -> Path:
  """Validates, then writes atomically (temp file in the same folder + os.replace)."""
  problems = validate(results)
  if problems:
    raise ValueError("refusing to save invalid results:\n  " + "\n  ".join(problems))
  text = json.dumps(results, indent=2, sort_keys=False, allow_nan=False) + "\n"
  if paths.is_remote(path):  # gs://: an object is committed whole when its upload completes
    paths.write_text_atomic(path, text)
    return paths.path(path)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def load(path: str | os.PathLike, strict: bool = True) -> dict:
  """Reads results.json; with strict=True a schema problem raises ValueError listing all of them."""
  path = paths.path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; run the comparison first or pass the right --workdir")
  with path.open(encoding="utf-8") as f:
    results = json.load(f)
  if strict:
    problems = validate(results)
    if problems:
      raise ValueError(f"{path} is not a valid results file:\n  " + "\n  ".join(problems))
  return results


# --------------------------------------------------------------------------- access


def baseline_family(results: Mapping) -> str:
  return (results.get("protocol") or {}).get("baseline_family") or DEFAULT_BASELINE


def all_runs(results: Mapping) -> list[dict]:
  return list(results.get("runs") or [])


def ok_runs(results: Mapping, family: str | None = None, scale: str | None = None) -> list[dict]:
  return [
    r
    for r in all_runs(results)
    if r.get("status") == "ok" and (family is None or r["family"] == family) and (scale is None or r["scale"] == scale)
  ]


def failed_runs(results: Mapping) -> list[dict]:
  return [r for r in all_runs(results) if r.get("status") == "failed"]


def families(results: Mapping) -> list[str]:
  """Families in first-seen order, baseline first."""
  seen: list[str] = []
  for r in all_runs(results):
    if r["family"] not in seen:
      seen.append(r["family"])
  base = baseline_family(results)
  return sorted(seen, key=lambda f: (f != base, seen.index(f)))


def scales(results: Mapping) -> list[str]:
  """Scale labels ordered by their median parameter count (over all runs of that label)."""
  by_scale: dict[str, list[int]] = {}
  for r in all_runs(results):
    by_scale.setdefault(r["scale"], []).append(r["params"])
  return sorted(by_scale, key=lambda s: sorted(by_scale[s])[len(by_scale[s]) // 2])


def metric_values(runs: Iterable[Mapping], path: Sequence[str]) -> list[float]:
  """Values at a nested path (e.g. ("final", "val_loss")) over runs, skipping absent/null ones."""
  out = []
  for r in runs:
    node: Any = r
    for key in path:
      node = node.get(key) if isinstance(node, Mapping) else None
    if node is not None:
      out.append(float(node))
  return out

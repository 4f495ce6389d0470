"""report.md + PNGs from a hand-made results dict: sections, numbers, failed runs, reproducibility."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from modernlm_jax.compare import decision, report
from modernlm_jax.compare import results as results_lib

PROTOCOL = {
  "data_source": "text:tiny/*.txt",
  "token_budget": 2_000_000,
  "schedule": {"kind": "cosine", "warmup_steps": 20, "max_lr": 3e-4},
  "batch_size": 8,
  "seq_len": 256,
  "seeds": [0, 1],
  "tokenizer": "gpt2-bpe",
  "baseline_family": "gpt2",
  "betas": (0.9, 0.95),  # a tuple becomes a list in JSON; the report must not change
}
SCALES = {"3.5M": 3_512_000, "8M": 8_112_000}
# Final val loss per family × scale; the candidate is ~3 % better at 8M.
FINAL = {("gpt2", "3.5M"): 4.60, ("gpt2", "8M"): 4.20, ("modern", "3.5M"): 4.50, ("modern", "8M"): 4.08}


def _run(family: str, scale: str, seed: int) -> dict:
  rng = np.random.default_rng([("gpt2", "modern").index(family), list(SCALES).index(scale), seed])
  final = FINAL[(family, scale)] + 0.01 * (seed - 0.5)
  tokens = [int(t) for t in np.linspace(0, 2_000_000, 41)]
  shape = np.exp(-np.linspace(0, 4, 41))
  train = (final + 6.0 * shape + 0.02 * rng.standard_normal(41)).tolist()
  val = (final + 6.0 * shape).tolist()
  modern = family == "modern"
  by_distance = {str(d): (0.95 if modern else 0.9) * math.exp(-d / (80.0 if modern else 30.0)) for d in (5, 10, 20, 50)}
  lengths = [256, 512, 1024, 2048]
  base_t = 2e-3 if scale == "3.5M" else 4e-3
  times = [base_t * (t / 256) ** (1.0 if modern else 1.9) for t in lengths]
  mem = [int(2**20 * (t / 256) ** (1.0 if modern else 2.0)) for t in lengths]
  return results_lib.make_run(
    family,
    scale,
    seed,
    SCALES[scale] + (1_000 if modern else 0),
    curves={"tokens": tokens, "train_loss": train, "val_loss": val},
    final={"val_loss": final, "ppl": math.exp(final), "bpb": final / math.log(2) / 4.2, "grad_norm_init": 1.5},
    tasks={"lambada": 0.20 + (0.02 if modern else 0.0) + 0.005 * seed},
    statefulness={
      "by_tier": {"short": 0.8 if modern else 0.7, "medium": 0.6 if modern else 0.4},
      "by_distance": by_distance,
      "score": (0.62 if modern else 0.45) + 0.01 * seed,
    },
    inference={
      "prefill_s": times[2],
      "decode_tok_s": (900.0 if modern else 500.0) + 5 * seed,
      "peak_mem_bytes": (300 if modern else 500) * 2**20,
      "mem_kind": "device_peak_bytes_in_use",
      "context_scaling": {"lengths": lengths, "times": times, "exponent": 1.0 if modern else 1.9, "mem_bytes": mem},
    },
  )


def make_results() -> dict:
  res = results_lib.new_results(PROTOCOL)
  for family in ("gpt2", "modern"):
    for scale in SCALES:
      for seed in (0, 1):
        results_lib.add_run(res, _run(family, scale, seed))
  results_lib.add_run(
    res, results_lib.make_run("modern", "8M", 2, SCALES["8M"] + 1_000, error="NaN loss at step 1200 (lr too high)")
  )
  res["smoke"] = {
    "scale": "8M",
    "data_fraction": {
      "fraction": 0.01,
      "by_family": {
        f: {"tokens": [1000, 2000, 4000, 8000], "train_loss": [8.0 - k * s for s in (0, 1, 2, 3)]}
        for f, k in (("gpt2", 0.50), ("modern", 0.55))
      },
    },
    "overfit": {
      "size": 1000,
      "unit": "examples",
      "by_family": {"gpt2": {"final_loss": 0.03}, "modern": {"final_loss": 0.02}},
    },
    "grad_norm": {"by_family": {"gpt2": 1.4, "modern": 1.9}},
  }
  return res


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
  out = tmp_path_factory.mktemp("report")
  res = make_results()
  assert results_lib.validate(res) == []
  path = report.write_report(res, out)
  return res, out, path, path.read_text(encoding="utf-8")


def test_report_has_every_section(rendered):
  _, _, _, text = rendered
  for heading in (
    "# Matched comparison report",
    "## Verdict",
    "## Protocol",
    "## Language modeling",
    "### Scale 3.5M",
    "### Scale 8M",
    "### Downstream tasks",
    "## Statefulness",
    "## Inference",
    "## Scaling law",
    "## Training stability",
    "## Smoke protocol",
    "## Failed runs",
  ):
    assert heading in text, heading


def test_verdict_line_and_numbers(rendered):
  res, _, _, text = rendered
  v = decision.verdict_from_results(res, "modern")
  # loss 4.08/4.20 < 1 (excellent), statefulness 0.625/0.455 (promising), speed 902.5/502.5 (promising)
  assert v["scale"] == "8M"
  assert v["decision"] == decision.GO
  assert v["tiers"]["loss_ratio"] == decision.EXCELLENT
  assert v["tiers"]["statefulness_ratio"] == decision.PROMISING
  assert "**Verdict — modern vs gpt2 at 8M: GO**" in text
  assert text.index("## Verdict") < text.index("## Protocol")
  assert f"{4.08 / 4.20:.3f}" in text  # loss ratio
  assert f"{0.625 / 0.455:.3f}" in text  # statefulness ratio
  assert "4.0800 ± 0.0071 (n=2)" in text  # mean ± sample std of the two seeds
  assert "Has 3 clear advantages" in text


def test_failed_run_listed_and_excluded(rendered):
  _, _, _, text = rendered
  failed = text[text.index("## Failed runs") :]
  assert "NaN loss at step 1200 (lr too high)" in failed
  # The failed third seed must not enter the 8M mean (n stays 2).
  lm = text[text.index("### Scale 8M") : text.index("## Statefulness")]
  assert "(n=3)" not in lm


def test_smoke_scaling_and_inference_numbers(rendered):
  res, _, _, text = rendered
  smoke = text[text.index("## Smoke protocol") : text.index("## Failed runs")]
  assert smoke.count("| pass |") == 3
  scaling = text[text.index("## Scaling law") : text.index("## Training stability")]
  fit = decision.family_fit(res, "gpt2")
  assert fit["kind"] == "pure_power_law"
  assert f"{fit['b']:.4f}" in scaling
  assert "VIOLATION" not in scaling
  inference = text[text.index("## Inference") : text.index("## Scaling law")]
  assert "1.90 (quadratic)" in inference and "1.00 (linear)" in inference
  assert "No loss spike" in text


def test_pngs_exist_and_are_not_trivial(rendered):
  _, out, _, text = rendered
  for name in report.FIGURES.values():
    p = out / name
    assert p.is_file(), name
    assert p.stat().st_size > 5_000, (name, p.stat().st_size)
    assert f"]({name})" in text


def test_regenerating_from_saved_json_is_identical(rendered, tmp_path):
  res, _, _, text = rendered
  saved = results_lib.save(res, tmp_path / "results.json")
  again = report.write_report(results_lib.load(saved), tmp_path / "again")
  assert again.read_text(encoding="utf-8") == text
  assert json.loads(saved.read_text()) == json.loads(json.dumps(res))


def test_missing_sections_say_what_is_missing(tmp_path):
  res = results_lib.new_results(PROTOCOL)
  for family in ("gpt2", "modern"):
    run = _run(family, "8M", 0)
    del run["statefulness"], run["inference"]
    results_lib.add_run(res, run)
  text = report.write_report(res, tmp_path).read_text(encoding="utf-8")
  assert "No statefulness results: no successful run has a `statefulness` entry" in text
  assert "No inference measurements" in text
  assert "Not run: results.json has no `smoke` entry" in text
  assert "`gpt2`: 1 successful scale(s), a fit needs at least 2" in text
  assert not (tmp_path / report.FIGURES["statefulness"]).exists()
  assert (tmp_path / report.FIGURES["val_curves"]).exists()
  # Without statefulness/speed/memory only the loss can graduate: ratio 4.08/4.20 is Excellent.
  assert "at 8M: GO" in text


def test_all_failed_still_renders(tmp_path):
  res = results_lib.new_results(PROTOCOL)
  results_lib.add_run(res, results_lib.make_run("gpt2", "8M", 0, 8_000_000, error="OOM"))
  results_lib.add_run(res, results_lib.make_run("modern", "8M", 0, 8_000_000, error="OOM"))
  text = report.write_report(res, tmp_path).read_text(encoding="utf-8")
  assert "at no common scale: FIX FIRST" in text
  assert "No successful runs" in text
  assert text.count("| OOM |") == 2


def test_invalid_results_are_rejected(tmp_path):
  res = make_results()
  res["runs"][0]["status"] = "done"
  with pytest.raises(ValueError, match="status must be 'ok' or 'failed'"):
    report.write_report(res, tmp_path)


# --------------------------------------------------------------------------- results.json schema


def test_validate_finds_each_problem():
  res = make_results()
  res["runs"].append(dict(res["runs"][0]))  # duplicate family/scale/seed
  res["runs"][1]["final"]["val_loss"] = float("nan")
  res["runs"][2]["curves"]["train_loss"] = res["runs"][2]["curves"]["train_loss"][:-1]
  res["runs"][3]["inference"]["mem_kind"] = "vram"
  res["runs"][4]["params"] = 0
  res["protocol"].pop("tokenizer")
  problems = "\n".join(results_lib.validate(res))
  assert "repeats family/scale/seed" in problems
  assert "runs[1]: .final.val_loss is NaN/inf; store null instead" in problems
  assert "runs[2].curves.train_loss has 40 points but tokens has 41" in problems
  assert "runs[3].inference.mem_kind must be one of" in problems
  assert "runs[4].params must be a positive integer" in problems
  assert "protocol is missing ['tokenizer']" in problems


def test_failed_run_needs_an_error_and_ok_run_needs_metrics():
  bad_failed = results_lib.make_run("gpt2", "8M", 0, 8_000_000)
  bad_failed["status"] = "failed"
  assert any("error must say why" in p for p in results_lib._validate_run(bad_failed, "run"))
  bare_ok = results_lib.make_run("gpt2", "8M", 0, 8_000_000)
  problems = results_lib._validate_run(bare_ok, "run")
  assert any("curves must be an object" in p for p in problems)
  assert any("final must be an object" in p for p in problems)
  with pytest.raises(ValueError, match="invalid run entry"):
    results_lib.add_run(results_lib.new_results(PROTOCOL), bare_ok)


def test_add_run_replaces_same_key_and_new_results_checks_protocol():
  res = results_lib.new_results(PROTOCOL)
  results_lib.add_run(res, _run("gpt2", "8M", 0))
  results_lib.add_run(res, results_lib.make_run("gpt2", "8M", 0, 8_112_000, error="rerun crashed"))
  assert len(res["runs"]) == 1 and res["runs"][0]["status"] == "failed"
  with pytest.raises(ValueError, match="protocol is missing"):
    results_lib.new_results({"data_source": "x"})


def test_save_is_atomic_and_refuses_invalid(tmp_path):
  res = make_results()
  path = results_lib.save(res, tmp_path / "results.json")
  before = path.read_text()
  res["runs"][0]["status"] = "maybe"
  with pytest.raises(ValueError, match="refusing to save invalid results"):
    results_lib.save(res, path)
  assert path.read_text() == before  # the good file is untouched
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp file left behind
  path.write_text(json.dumps({"schema_version": 1, "protocol": {}, "runs": []}))
  with pytest.raises(ValueError, match="not a valid results file"):
    results_lib.load(path)
  assert results_lib.load(path, strict=False)["runs"] == []
  with pytest.raises(FileNotFoundError, match="run the comparison first"):
    results_lib.load(tmp_path / "missing.json")


def test_scales_ordered_by_params_and_baseline_first():
  res = make_results()
  res["runs"].reverse()
  assert results_lib.scales(res) == ["3.5M", "8M"]
  assert results_lib.families(res) == ["gpt2", "modern"]


def test_adapters_from_eval_outputs():
  probe = {
    "tiers": {"short_term_recall": {"acc": 0.9, "n": 20, "chance": 0.25, "truncated": 0}},
    "by_distance": {5: {"acc": 0.8, "n": 20, "chance": 0.25, "truncated": 0}},
    "overall_acc": 0.85,
    "mean_chance": 0.3,
    "n": 40,
    "truncated": 0,
  }
  st = results_lib.statefulness_entry(probe)
  assert st == {"by_tier": {"short_term_recall": 0.9}, "by_distance": {"5": 0.8}, "score": 0.85, "chance": 0.3}
  final = results_lib.final_from_perplexity(
    {"nats_per_token": 3.0, "perplexity": math.exp(3.0), "bits_per_byte": 1.1}, grad_norm_init=2.0
  )
  assert final == {"val_loss": 3.0, "ppl": math.exp(3.0), "bpb": 1.1, "grad_norm_init": 2.0}
  run = results_lib.make_run(
    "gpt2",
    "8M",
    0,
    8_000_000,
    curves={"tokens": [0], "train_loss": [9.0], "val_loss": [None]},
    final=final,
    statefulness=st,
  )
  assert results_lib._validate_run(run, "run") == []
  with pytest.raises(ValueError, match="run_probes"):
    results_lib.statefulness_entry({"acc": 1.0})

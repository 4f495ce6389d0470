"""The comparison must not mislead: real data by default, smoke gate, units, skipped items, data repetition."""

from __future__ import annotations

import copy
import time

import pytest
from test_compare import CONFIGS, _mini_config

from modernlm_jax.compare import decision
from modernlm_jax.compare import plan as compare_plan
from modernlm_jax.compare import report as report_lib
from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare import smoke as compare_smoke
from modernlm_jax.jobs import compare

# --------------------------------------------------------------------------- real data by default


def test_real_data_presets_stop_in_seconds_naming_data_source_without_shared_data(tmp_path, monkeypatch):
  monkeypatch.setenv("MODERNLM_SHARED_DATA", str(tmp_path / "empty"))
  (tmp_path / "empty").mkdir()
  for preset in ("tiny", "seed004", "ablate-gate"):
    assert CONFIGS.get_config(preset).data.source == ""  # no toy corpus substituted in silence
  c = CONFIGS.get_config("tiny")
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match=r"--config\.data\.source") as err:
    compare.run(c, tmp_path / "cmp")
  assert time.perf_counter() - t0 < 10
  assert "MODERNLM_SHARED_DATA" in str(err.value)
  assert not (tmp_path / "cmp").exists()  # stopped before any work
  assert CONFIGS.get_config("smoke").data.source == "builtin"  # the machinery check keeps the embedded corpus


def test_real_data_presets_default_to_the_shared_gutenberg_and_wikitext_text(shared_data_dir, monkeypatch):
  monkeypatch.setenv("MODERNLM_SHARED_DATA", str(shared_data_dir))
  c = CONFIGS.get_config("tiny")
  parts = dict(
    (sub, w) for w, sub in __import__("modernlm_jax.data.sources", fromlist=["x"]).parse_mixture(c.data.source)
  )
  assert f"text@file:{shared_data_dir}/gutenberg/*.txt" in parts
  assert f"text@blank:{shared_data_dir}/wikitext2/train.txt" in parts
  assert compare_plan.resolve_data_root(c) == (str(shared_data_dir), "")
  assert c.compare.suite == "quick"
  compare_plan.check_data_source(c)  # no error


def test_task_data_root_resolves_like_the_data_and_says_why_when_absent(tmp_path, monkeypatch):
  monkeypatch.setenv("MODERNLM_SHARED_DATA", str(tmp_path / "nowhere"))
  c = CONFIGS.get_config("smoke")
  root, why = compare_plan.resolve_data_root(c)
  assert root == "" and "nowhere" in why and "compare.data_root" in why
  c.compare.data_root = str(tmp_path)
  assert compare_plan.resolve_data_root(c) == (str(tmp_path), "")


# --------------------------------------------------------------------------- smoke gate


@pytest.mark.slow
def test_a_failed_overfit_check_yields_fix_first_before_full_training(tmp_path, monkeypatch):
  config = _mini_config(tmp_path)
  config.compare.families = "gpt2,modern"
  config.compare.smoke.update(dict(gate=True, overfit_steps=60, overfit_lr=3e-2))
  real_overfit = compare_smoke.overfit

  def modern_cannot_overfit(member_cfg, batch, *, steps, lr):
    out = real_overfit(member_cfg, batch, steps=steps, lr=lr)
    if member_cfg.model.family == "modern":
      out["final_loss"] = 3.0  # as if the modern family could not memorise 32 tokens
    return out

  monkeypatch.setattr(compare.smoke_lib, "overfit", modern_cannot_overfit)
  workdir = tmp_path / "cmp"
  results = compare.run(config, workdir)
  smoke = results["smoke"]
  assert smoke["stopped_before_training"] and smoke["gate"] is True
  assert results["runs"] == []  # full training never started
  stop = compare_smoke.fraction_steps(10, 0.01, 2, 2)
  for arm in ("gpt2", "modern"):
    assert compare.final_checkpoint_step(workdir / "runs" / f"{arm}-tiny-s0") == stop < 10
  v = decision.verdict_from_results(results, "modern", "gpt2")
  assert v["decision"] == decision.FIX_FIRST and "overfit" in v["smoke_failed"]
  assert results["smoke"]["overfit"]["by_family"]["modern"]["final_loss"] == 3.0
  report = (workdir / "report.md").read_text()
  assert "FIX FIRST" in report and "smoke check(s) failed:" in report and "overfit" in report
  assert "full training was not started" in report and "Verdict audit" in report


# --------------------------------------------------------------------------- results-level rules


def _run(family, scale, params, loss, bpb, tokenizer, epochs=1.0):
  return results_lib.make_run(
    family,
    scale,
    0,
    params,
    curves={"tokens": [10, 20], "train_loss": [3.0, 2.9], "val_loss": [3.1, 3.0]},
    final={"val_loss": loss, "ppl": 2.718**loss, "bpb": bpb},
    tokenizer=tokenizer,
    data={"tokens_seen": 1000, "tokens_per_epoch": int(1000 / epochs), "epochs": epochs},
    perplexity={"wikitext2:test": {"bpb": bpb, "ppl": 50.0}},
    skipped={
      "perplexity": {"ptb:test": "corpus file /x/ptb.test.txt not found"},
      "tasks": {"hellaswag": "no data for hellaswag under /x"},
    },
    tasks={"sst2": 0.5},
  )


def _results(runs, smoke=None):
  proto = {
    "data_source": "text:x",
    "token_budget": 1000,
    "schedule": "cosine",
    "batch_size": 1,
    "seq_len": 8,
    "seeds": [0],
    "tokenizer": "sp-a; sp-b",
    "baseline_family": "gpt2",
  }
  res = results_lib.new_results(proto)
  for r in runs:
    results_lib.add_run(res, r)
  if smoke is not None:
    res["smoke"] = smoke
  return res


def test_losses_across_tokenizers_use_bits_per_byte_in_fit_red_line_and_report(tmp_path):
  # Per-token loss rises 2 -> 30M (a bigger vocabulary), bits/byte falls: only bits/byte is a valid comparison.
  runs = [_run(f, "8m", 8e6, 4.0, 1.40, "sp-8192") for f in ("gpt2", "modern")]
  runs += [_run(f, "125m", 1.2e8, 4.5, 1.10, "gpt2-bpe") for f in ("gpt2", "modern")]
  res = _results(runs)
  assert decision.scaling_unit(res) == "bpb"
  v = decision.verdict_from_results(res, "modern", "gpt2")
  assert v["scaling_unit"] == "bpb" and v["loss_unit"] == "val_loss"  # one tokenizer at the decision scale
  assert all(not c["violated"] for c in v["scaling_checks"])  # per-token loss would call this a violation
  per_token = decision.scaling_checks(decision.family_scaling_points(res, "modern"), None)
  assert per_token[0]["violated"]
  fit = decision.family_fit(res, "gpt2", "bpb")
  assert fit["losses"] == [1.40, 1.10]
  report = report_lib.write_report(res, tmp_path).read_text()
  assert "Unit: validation bits/byte" in report and "mean validation bits/byte" in report
  assert "val loss (nats/token)" in report


def test_report_lists_skipped_items_corpora_bpb_data_repetition_and_audit(tmp_path):
  runs = [_run("gpt2", "8m", 8e6, 4.0, 1.4, "sp", epochs=6.5), _run("modern", "8m", 8e6, 3.9, 1.38, "sp")]
  res = _results(runs)
  report = report_lib.write_report(res, tmp_path).read_text()
  assert "skipped: corpus file /x/ptb.test.txt not found" in report
  assert "skipped: no data for hellaswag under /x" in report
  assert "wikitext2:test" in report and "1.4000 (n=1) bpb" in report
  assert "tokens / epoch" in report and "6.50 (repeats its data: > 4 epochs)" in report
  verdict = report[report.index("## Verdict") : report.index("## Protocol")]
  assert "WARNING: gpt2-8m-s0 repeats its training data 6.5 times" in verdict
  assert "Verdict audit" in verdict and "3 loss gate" in verdict and "loss ratio 0.9750" in verdict
  assert results_lib.validate(res) == []


def test_smoke_failure_gates_the_verdict_unless_the_gate_is_off():
  runs = [_run("gpt2", "8m", 8e6, 4.0, 1.4, "sp"), _run("modern", "8m", 8e6, 3.0, 1.0, "sp")]
  smoke = {
    "scale": "8m",
    "overfit": {
      "size": 32,
      "unit": "tokens",
      "by_family": {"gpt2": {"final_loss": 0.01}, "modern": {"final_loss": 2.0}},
    },
  }
  gated = decision.verdict_from_results(_results(runs, copy.deepcopy(smoke)), "modern", "gpt2")
  assert gated["decision"] == decision.FIX_FIRST and "overfit" in gated["reasons"][0]
  off = decision.verdict_from_results(_results(runs, {**smoke, "gate": False}), "modern", "gpt2")
  assert off["decision"] != decision.FIX_FIRST or "graduation" in " ".join(off["reasons"])
  assert "compare.smoke.gate=False" in off["reasons"][0]


def test_results_schema_rejects_a_skipped_item_without_reason():
  bad = _run("gpt2", "8m", 8e6, 4.0, 1.4, "sp")
  bad["skipped"] = {"tasks": {"sst2": ""}}
  with pytest.raises(ValueError, match="skipped"):
    results_lib.add_run(_results([]), bad)


# --------------------------------------------------------------------------- a test-sized comparison on real data


@pytest.mark.slow
def test_test_sized_comparison_on_real_data_reports_tasks_corpora_and_epochs(tmp_path, shared_data_dir, monkeypatch):
  monkeypatch.setenv("MODERNLM_SHARED_DATA", str(shared_data_dir))
  config = _mini_config(tmp_path)
  config.compare.families = "gpt2,modern"
  config.data.source = f"text@file:{shared_data_dir}/gutenberg/carroll__alice_s_adventures_in_wonderland.txt"
  config.data.val_source = f"text@blank:{shared_data_dir}/wikitext2/valid.txt"
  config.compare.update(
    dict(suite="quick", perplexity="wikitext2:test,wikitext103:test,ptb:test", perplexity_max_chars=3000, data_root="")
  )
  config.compare.probes.enabled = False
  config.compare.inference.enabled = False
  config.compare.smoke.enabled = False
  workdir = tmp_path / "cmp"
  results = compare.run(config, workdir)
  runs = {r["family"]: r for r in results["runs"]}
  assert set(runs) == {"gpt2", "modern"}
  for r in runs.values():
    assert r["status"] == "ok", r.get("error")
    assert set(r["perplexity"]) == {"wikitext2:test", "wikitext103:test", "ptb:test"}
    assert all(v["bpb"] > 0 and v["ppl"] > 1 for v in r["perplexity"].values())
    assert set(r["tasks"]) | set((r.get("skipped") or {}).get("tasks", {})) == {"lambada", "hellaswag", "sst2", "gsm8k"}
    d = r["data"]
    assert d["tokens_seen"] == 10 * 4 * 32 and d["tokens_per_epoch"] > 0
    assert d["epochs"] == pytest.approx(d["tokens_seen"] / d["tokens_per_epoch"])
  report = (workdir / "report.md").read_text()
  for text in (
    "tokens / epoch",
    "epochs",
    "val loss (nats/token)",
    "bits/byte",
    "wikitext103:test",
    "ptb:test",
    "### Downstream tasks",
    "sst2",
  ):
    assert text in report, text
  assert str(shared_data_dir) in results["protocol"]["downstream_tasks"]

"""The matched-comparison task: presets, member planning, and a tiny end-to-end comparison."""

import importlib.util
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from modernlm_jax.compare import inference as compare_inference
from modernlm_jax.compare import member_eval as compare_eval
from modernlm_jax.compare import plan as compare_plan
from modernlm_jax.compare import report as report_lib
from modernlm_jax.compare import results as results_lib
from modernlm_jax.compare import smoke as compare_smoke
from modernlm_jax.jobs import compare
from modernlm_jax.model import ModelConfig, init_params

CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "compare.py"


def _configs_module():
  spec = importlib.util.spec_from_file_location("compare_config", CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CONFIGS = _configs_module()
BYTES_TOK = ml_collections.ConfigDict(
  dict(kind="bytes", vocab_size=8192, model_type="bpe", byte_fallback=True, path="")
)


# --------------------------------------------------------------------------- presets


@pytest.mark.slow
@pytest.mark.parametrize("preset", CONFIGS.PRESETS)
def test_every_preset_builds_valid_member_configs(preset):
  c = CONFIGS.get_config(preset)
  members = compare_plan.plan(c)
  arms = compare_plan.parse_list(c.compare.families, "families")
  scales = compare_plan.parse_list(c.compare.scales, "scales")
  seeds = compare_plan.parse_ints(c.compare.seeds, "seeds")
  assert len(members) == len(arms) * len(scales) * len(seeds)
  assert c.compare.baseline in arms
  for m in (m for m in members if m.seed == seeds[0]):  # other seeds differ only in `seed`
    mc = compare_plan.member_config(c, m, BYTES_TOK)
    cfg = ModelConfig.from_dict(mc.model)  # valid model
    assert mc.seed == m.seed and mc.task == "pretrain" and "compare" not in mc
    # The matched protocol: every member keeps the comparison's budget and data.
    assert (mc.train.steps, mc.train.batch_size, mc.data.seq_len, mc.data.source) == (
      c.train.steps,
      c.train.batch_size,
      c.data.seq_len,
      c.data.source,
    )
    assert mc.data.seq_len <= cfg.max_len


def test_smoke_preset_includes_the_hybrid_when_registered_and_shares_one_vocabulary():
  c = CONFIGS.get_config("smoke")
  assert c.compare.families.split(",")[:2] == ["gpt2", "modern"]
  if "hybrid" in compare_plan.valid_families():
    assert "hybrid" in c.compare.families.split(",")
  specs = {json.dumps(compare_plan.tokenizer_settings(c, s)) for s in c.compare.scales.split(",")}
  assert len(specs) == 1 and len(c.compare.scales.split(",")) >= 2  # two scales on one tokenizer: a scaling fit


def test_ablation_presets_change_exactly_one_field_of_the_modern_family():
  c = CONFIGS.get_config("ablate-positions")
  by_arm = {
    m.arm: ModelConfig.from_dict(compare_plan.member_config(c, m, BYTES_TOK).model)
    for m in compare_plan.plan(c)
    if m.seed == 0
  }
  assert {a: cfg.positions for a, cfg in by_arm.items()} == {
    "rope": "rope",
    "alibi": "alibi",
    "rope+alibi": "rope+alibi",
  }
  rope = by_arm["rope"].to_dict()
  for arm, cfg in by_arm.items():
    assert {k for k, v in cfg.to_dict().items() if rope[k] != v} <= {"positions"}, arm
  c = CONFIGS.get_config("ablate-sigreg")
  weights = {m.arm: compare_plan.member_config(c, m, BYTES_TOK).train.sigreg_weight for m in compare_plan.plan(c)}
  assert weights == {"sigreg-off": 0.0, "sigreg-on": 0.1}
  c = CONFIGS.get_config("ablate-seqlen")
  sched = {m.arm: compare_plan.member_config(c, m, BYTES_TOK).data.seq_len_schedule for m in compare_plan.plan(c)}
  assert sched["fixed-len"] == "" and sched["progressive-len"].endswith(f",{c.data.seq_len}")


def _flat(cfg) -> dict:
  return {f"model.{k}": v for k, v in ModelConfig.from_dict(cfg.model).to_dict().items()} | {
    f"{section}.{k}": v for section in ("train", "data") for k, v in cfg[section].items()
  }


def test_cpu_ablations_change_only_what_each_arm_names():
  c = CONFIGS.get_config("cpu-ablations")
  flat = {m.arm: _flat(compare_plan.member_config(c, m, BYTES_TOK)) for m in compare_plan.plan(c)}
  base = flat["modern"]
  changed = {arm: {k for k, v in f.items() if base.get(k) != v} for arm, f in flat.items()}
  assert changed == {
    "modern": set(),
    "alibi": {"model.positions"},
    "rope+alibi": {"model.positions"},
    "learned-pos": {"model.positions"},
    "gate-headwise": {"model.attn_gate"},
    "gate-elementwise": {"model.attn_gate"},
    "sinks": {"model.attn_sinks"},
    "sigreg": {"train.sigreg_weight"},
    "alibi-progressive": {"model.positions", "data.seq_len_schedule"},
  }
  assert flat["alibi-progressive"]["data.seq_len_schedule"].startswith("64:") and c.compare.seeds == "0"


def test_unknown_preset_scale_or_family_raises_listing_the_valid_ones():
  with pytest.raises(ValueError, match=r"valid presets: .*smoke.*seed004"):
    CONFIGS.get_config("huge")
  c = CONFIGS.get_config("smoke")
  c.compare.scales = "tiny,5m"
  with pytest.raises(ValueError, match=r"unknown scale\(s\) \['5m'\].*valid scales: .*'3.5m'.*'125m'"):
    compare_plan.plan(c)
  c = CONFIGS.get_config("smoke")
  c.compare.families = "gpt2,gpt5"
  with pytest.raises(ValueError, match=r"unknown family 'gpt5'.*valid families: .*'modern'"):
    compare_plan.plan(c)
  c = CONFIGS.get_config("smoke")
  c.compare.baseline = "llama"
  with pytest.raises(ValueError, match="compare.baseline='llama' is not one of"):
    compare_plan.plan(c)


def test_a_variant_may_not_change_what_all_members_share():
  c = CONFIGS.get_config("ablate-gate")
  c.compare.variants["gate-none"].train = ml_collections.ConfigDict({"steps": 10})
  with pytest.raises(ValueError, match=r"overrides \['train.steps'\].*every member must share"):
    compare_plan.plan(c)


# --------------------------------------------------------------------------- pieces


def test_curves_from_metrics_keep_the_last_row_of_a_repeated_step(tmp_path):
  rows = [
    {"step": 1, "loss": 5.0, "tokens_seen": 64, "grad_norm": 2.5},
    {"step": 2, "loss": 4.0, "tokens_seen": 128},
    {"step": 2, "val_loss": 4.5, "val_ppl": 90.0},
    {"step": 2, "loss": 3.9, "tokens_seen": 128},  # resumed
    {"step": 4, "loss": 3.0, "tokens_seen": 256},
    {"step": 4, "val_loss": 3.5},
  ]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  curves = compare_eval.curves_from_metrics(tmp_path, tokens_per_step=64)
  assert curves == {
    "tokens": [64, 128, 256],
    "train_loss": [5.0, 3.9, 3.0],
    "val_tokens": [128, 256],
    "val_loss": [4.5, 3.5],
  }
  assert compare_eval.first_step_metric(tmp_path, "grad_norm") == 2.5


def test_data_fraction_curve_takes_the_budget_head_with_a_minimum_of_points():
  curves = {"tokens": [10, 20, 30, 40, 50, 60], "train_loss": [5.0, 4.8, None, 4.5, 4.4, 4.3]}
  c, used = compare_smoke.data_fraction_curve(curves, token_budget=1000, fraction=0.045, min_points=2)
  assert c == {"tokens": [10, 20, 40], "train_loss": [5.0, 4.8, 4.5]} and used == pytest.approx(0.04)
  c, used = compare_smoke.data_fraction_curve(curves, token_budget=10_000, fraction=0.001, min_points=4)
  assert c["tokens"] == [10, 20, 40, 50] and used == pytest.approx(0.005)


def test_validation_stream_counts_text_bytes_plus_one_per_document_boundary(tmp_path):
  from modernlm_jax.data.tokenizers import ByteTokenizer

  docs = ["first document", "zweites Dokument \u00fc", "third"]
  (tmp_path / "val.txt").write_text("\n\n".join(docs), encoding="utf-8")
  data = ml_collections.ConfigDict(
    dict(source="builtin", val_source=f"text:{tmp_path}/val.txt", jsonl_field="text", skip_bad_rows=False)
  )
  assert compare_eval.validation_texts(data) == docs
  ids, n_bytes = compare_eval.validation_stream(data, ByteTokenizer(), max_tokens=0)
  assert n_bytes == sum(len(d.encode()) + 1 for d in docs) and len(ids) == n_bytes + 1
  assert ids[0] == 256 and ids[-1] == 256
  ids, n_bytes = compare_eval.validation_stream(data, ByteTokenizer(), max_tokens=20)
  assert len(ids) == 21 and n_bytes == len(docs[0]) + 1 + 5  # 15 tokens of doc 1, then 5 bytes of doc 2


def _tiny(family, **kw):
  fields = dict(vocab_size=64, max_len=32, n_layers=1, d_model=16, n_heads=2, d_ff=32, family=family)
  if family == "modern":
    fields.update(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False)
  return ModelConfig(**{**fields, **kw})


def test_scale_plan_caps_attention_lengths_and_shares_prefill_and_decode_lengths():
  settings = ml_collections.ConfigDict(
    dict(
      prefill_tokens=1024,
      prefill_repeats=3,
      decode_tokens=256,
      decode_repeats=2,
      context_lengths="16,32,64",
      long_context_lengths="128",
      context_repeats=2,
      subprocess=False,
    )
  )
  free = (
    _tiny("modern", positions="none", layer_pattern=("ssm",))
    if "hybrid" in compare_plan.valid_families()
    else _tiny("modern", positions="none")
  )
  plans = compare_inference.scale_plan({"gpt2": _tiny("gpt2"), "modern": _tiny("modern"), "free": free}, settings)
  assert plans["gpt2"]["context_lengths"] == [16, 32] and plans["modern"]["context_lengths"] == [16, 32]
  assert "learned position table" in plans["gpt2"]["context_skipped"]["64"]
  assert "128" in plans["gpt2"]["context_skipped"]  # the long lengths are listed as skipped too
  assert {p["prefill_tokens"] for p in plans.values()} == {32} and {p["decode_tokens"] for p in plans.values()} == {32}
  if not free.has_attention:
    assert plans["free"]["context_lengths"] == [16, 32, 64, 128] and not plans["free"]["context_skipped"]


@pytest.mark.slow
def test_inference_in_a_subprocess_matches_in_process_and_adds_memory():
  cfg = _tiny("modern")
  params = init_params(cfg, jax.random.key(0))
  plan = {
    "prefill_tokens": 16,
    "prefill_repeats": 2,
    "decode_tokens": 8,
    "decode_repeats": 2,
    "context_lengths": [8, 16],
    "context_repeats": 2,
    "context_skipped": {},
    "memory": True,
  }
  isolated = compare_inference.entry(compare_inference.measure_in_subprocess(params, cfg, plan), plan)
  local = compare_inference.entry(compare_inference.measure(params, cfg, {**plan, "memory": False}), plan)
  assert isolated["peak_mem_bytes"] > 0 and isolated["mem_kind"] in results_lib.MEM_KINDS
  assert "peak_mem_bytes" not in local and "memory_note" in local
  for e in (isolated, local):
    assert e["prefill_s"] > 0 and e["decode_tok_s"] > 0 and e["context_scaling"]["lengths"] == [8, 16]
    assert np.isfinite(e["context_scaling"]["exponent"])


# --------------------------------------------------------------------------- end to end


def _write_corpus(folder: Path) -> str:
  """A small deterministic text corpus (loads in milliseconds, unlike the builtin one)."""
  rng = np.random.default_rng(0)
  words = "the a cat dog sat ran on under old red blue house tree river stone quiet loud and then".split()
  docs = [" ".join(rng.choice(words, size=80)).capitalize() + "." for _ in range(60)]
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "corpus.txt").write_text("\n\n".join(docs))
  return f"text:{folder}/corpus.txt"


def _mini_config(tmp_path: Path):
  c = CONFIGS.get_config("smoke")
  tiny = dict(n_layers=1, d_model=32, n_heads=2, d_ff=64, max_len=64)
  c.compare.variants = ml_collections.ConfigDict(
    {
      "gpt2": CONFIGS._variant("gpt2", "tiny gpt2", model=tiny),
      "modern": CONFIGS._variant("modern", "tiny modern", model=tiny),
      "broken": CONFIGS._variant("modern", "invalid override", model={**tiny, "n_heads": 5}),
    }
  )
  c.compare.update(dict(families="gpt2,modern,broken", scales="tiny", seeds="0", tokenizer="bytes", vocab_size=257))
  c.data.update(
    dict(source=_write_corpus(tmp_path / "data"), seq_len=32, val_tokens=512, cache_dir=str(tmp_path / "cache"))
  )
  c.mesh.data = 1  # one device: the tests' fake 8-device CPU would need a batch of 8
  c.train.update(
    dict(
      steps=10,
      batch_size=4,
      warmup_steps=2,
      eval_every=5,
      eval_batches=2,
      checkpoint_every=10,
      log_every=2,
      async_checkpoint=False,
    )
  )
  c.compare.probes.update(dict(num_per_tier=1, distances="1,3", long_context=64, batch_size=8))
  c.compare.inference.update(
    dict(
      prefill_tokens=32,
      prefill_repeats=2,
      decode_tokens=8,
      decode_repeats=1,
      context_lengths="16,32",
      long_context_lengths="",
      context_repeats=1,
      subprocess=False,
    )
  )
  # 5 overfit steps cannot memorise anything: the gate is off so the rest of the machinery runs (and is recorded).
  c.compare.smoke.update(dict(overfit_rows=2, overfit_len=16, overfit_steps=5, min_points=2, gate=False))
  c.compare.update(dict(suite="", perplexity=""))
  c.compare.long_context.enabled = c.compare.dialogue.enabled = False  # covered by test_compare_protocol.py
  return c


def _line_counts(workdir: Path) -> dict[str, int]:
  return {p.parent.name: len(p.read_text().splitlines()) for p in sorted((workdir / "runs").glob("*/metrics.jsonl"))}


@pytest.mark.slow
def test_mini_comparison_end_to_end_resumes_and_reports_a_crashed_member(tmp_path):
  config = _mini_config(tmp_path)
  workdir = tmp_path / "cmp"
  results = compare.run(config, workdir)

  by_arm = {r["family"]: r for r in results["runs"]}
  assert by_arm["broken"]["status"] == "failed" and "n_heads" in by_arm["broken"]["error"]
  assert (workdir / "runs" / "broken-tiny-s0" / "error.txt").is_file()
  for arm in ("gpt2", "modern"):
    r = by_arm[arm]
    assert r["status"] == "ok", r.get("error")
    assert r["final"]["bpb"] > 0 and r["final"]["grad_norm_init"] > 0
    # Step 2: where the smoke protocol's data-fraction test stopped (and evaluated) before full training resumed.
    assert r["curves"]["val_tokens"] == [2 * 4 * 32, 5 * 4 * 32, 10 * 4 * 32]
    assert set(r["statefulness"]["by_distance"]) == {"1", "3"}
    assert r["inference"]["context_scaling"]["lengths"] == [16, 32] and r["inference"]["prefill_tokens"] == 32
    assert r["inference"]["decode_tok_s"] > 10  # a recompile inside the timed decode loop would show here
  assert results["protocol"]["token_budget"] == 10 * 4 * 32 and results["protocol"]["tokenizer"] == "bytes-v1"
  assert set(results["smoke"]["overfit"]["by_family"]) == {"gpt2", "modern"}
  assert results["smoke"]["gate"] is False and not results["smoke"]["stopped_before_training"]
  assert results_lib.validate(results_lib.load(workdir / "results.json")) == []

  report = (workdir / "report.md").read_text()
  assert "## Failed runs" in report and "broken" in report and "n_heads" in report
  assert "Gate: OFF (compare.smoke.gate=False)" in report and "NOT gated" in report
  for png in ("val_loss_curves.png", "context_scaling.png", "statefulness_vs_distance.png", "scaling_law.png"):
    assert (workdir / png).stat().st_size > 1000, png
  regenerated = report_lib.write_report(results_lib.load(workdir / "results.json"), tmp_path / "again")
  assert regenerated.read_text() == report  # the report is a function of results.json alone

  # Resume: finished members are not retrained; one with a lost entry is only re-evaluated.
  lines = _line_counts(workdir)
  saved = results_lib.load(workdir / "results.json")
  saved["runs"] = [r for r in saved["runs"] if r["family"] != "modern"]
  results_lib.save(saved, workdir / "results.json")
  again = compare.run(config, workdir)
  assert _line_counts(workdir) == lines
  again_by_arm = {r["family"]: r for r in again["runs"]}
  assert again_by_arm["gpt2"] == by_arm["gpt2"]  # skipped: not even re-measured
  assert again_by_arm["modern"]["status"] == "ok"
  assert again_by_arm["modern"]["final"]["val_loss"] == pytest.approx(by_arm["modern"]["final"]["val_loss"], rel=1e-5)
  assert again_by_arm["broken"]["status"] == "failed"
  # compare.remeasure=inference: only the inference entries are measured again; nothing is retrained.
  config.compare.remeasure = "inference"
  remeasured = {r["family"]: r for r in compare.run(config, workdir)["runs"]}
  assert _line_counts(workdir) == lines
  for arm in ("gpt2", "modern"):
    before, after = again_by_arm[arm], remeasured[arm]
    assert after["inference"]["decode_tok_s"] != before["inference"]["decode_tok_s"]  # a fresh timing
    assert {k: v for k, v in after.items() if k != "inference"} == {k: v for k, v in before.items() if k != "inference"}
  command = (workdir / "COMMAND").read_text().splitlines()  # provenance: written at start, appended on resume
  assert command[1].startswith("commit ") and command[2].startswith("started ") and command[3].startswith("resumed ")
  assert command[4].startswith("resumed ") and command[4].endswith("(remeasure=inference)")

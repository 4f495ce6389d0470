"""The rest of the protocol inside a test-sized comparison: tier-3 rows, the long-context curve and PNG,
conversational ppl/BLEU, and compute-matched (FLOPs) budgets."""

import importlib.util
import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from modernlm_jax.compare import plan as plan_lib
from modernlm_jax.compare import results as results_lib
from modernlm_jax.jobs import compare

CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "compare.py"


def _configs():
  spec = importlib.util.spec_from_file_location("compare_config_protocol", CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CONFIGS = _configs()


@pytest.mark.slow
def test_flops_budget_matches_training_flops_of_the_real_presets():
  from modernlm_jax.train.flops import flops_per_token

  c = CONFIGS.get_config("tiny")
  c.compare.budget = "flops"
  members = plan_lib.plan(c)
  steps = {m.name: plan_lib.member_steps(c, m) for m in members}
  tokens_per_step = int(c.train.batch_size) * int(c.data.seq_len)
  for m in members:
    b = plan_lib.budget_entry(c, m)
    flops = flops_per_token(plan_lib.model_config(c, m), int(c.data.seq_len)) * tokens_per_step * b["steps"]
    assert b["train_flops"] == pytest.approx(flops)
    assert abs(b["flops_vs_baseline"] - 1) < 0.01, (m.name, b)
    assert plan_lib.member_config(c, m, ml_collections.ConfigDict(c.tokenizer.to_dict())).train.steps == b["steps"]
  assert steps["gpt2-3.5m-s0"] == int(c.train.steps)
  assert len({steps[m.name] for m in members if m.scale == "3.5m"}) > 1  # different families, different steps
  c.compare.budget = "tokens"
  assert {plan_lib.member_steps(c, m) for m in members} == {int(c.train.steps)}
  c.compare.budget = "energy"
  with pytest.raises(ValueError, match="compare.budget"):
    plan_lib.plan(c)


def _write_texts(folder: Path) -> tuple[str, str]:
  rng = np.random.default_rng(0)
  words = "the a cat dog sat ran on under old red blue house tree river stone quiet loud and then".split()
  folder.mkdir(parents=True, exist_ok=True)
  docs = [" ".join(rng.choice(words, size=80)).capitalize() + "." for _ in range(60)]
  (folder / "corpus.txt").write_text("\n\n".join(docs))
  for i in range(3):  # long "books": one document per file, each far longer than 32K bytes
    (folder / f"book{i}.txt").write_text(" ".join(rng.choice(words, size=9000)))
  dd = [
    {"dialog": [f"Do you like the {w} ?", f"Yes , the {w} is nice .", "Why ?", f"Because the {w} is old ."]}
    for w in words[:6]
  ]
  (folder / "dd.jsonl").write_text("\n".join(json.dumps(d) for d in dd))
  return f"text:{folder}/corpus.txt", f"text@file:{folder}/book*.txt"


def _protocol_config(tmp_path: Path, budget: str):
  c = CONFIGS.get_config("smoke")
  # max_len 256: the rolling windows advance in chunks of a quarter window, so a larger window means fewer calls
  tiny = dict(n_layers=1, d_model=32, n_heads=2, d_ff=64, max_len=256)
  c.compare.variants = ml_collections.ConfigDict(
    {
      "gpt2": CONFIGS._variant("gpt2", "tiny gpt2", model=tiny),
      "modern": CONFIGS._variant("modern", "tiny modern", model=tiny),
      "hybrid": CONFIGS._variant("hybrid", "tiny recurrent", model={**tiny, "layer_pattern": "rwkv"}),
    }
  )
  corpus, books = _write_texts(tmp_path / "data")
  c.compare.update(
    dict(families="gpt2,modern,hybrid", scales="tiny", seeds="0", tokenizer="bytes", vocab_size=257, budget=budget)
  )
  c.data.update(dict(source=corpus, seq_len=32, val_tokens=512, cache_dir=str(tmp_path / "cache")))
  c.mesh.data = 1
  c.train.update(
    dict(
      steps=60,
      batch_size=2,
      warmup_steps=2,
      eval_every=60,
      eval_batches=1,
      checkpoint_every=60,
      log_every=10,
      async_checkpoint=False,
    )
  )
  c.compare.probes.update(dict(num_per_tier=2, distances="1", long_context=64, batch_size=8))
  c.compare.inference.enabled = False
  c.compare.smoke.enabled = False
  c.compare.long_context.update(dict(source=books, extrapolate_max=2048))
  c.compare.dialogue.update(
    dict(source=f"dailydialog:{tmp_path / 'data' / 'dd.jsonl'}", num_dialogues=4, max_new_tokens=8)
  )
  return c


@pytest.mark.slow
def test_test_sized_comparison_runs_the_rest_of_the_protocol(tmp_path):
  config = _protocol_config(tmp_path, "flops")
  workdir = tmp_path / "cmp"
  results = compare.run(config, workdir)
  runs = {r["family"]: r for r in results["runs"]}
  assert all(r["status"] == "ok" for r in runs.values()), {k: r.get("error") for k, r in runs.items()}
  assert results_lib.validate(results_lib.load(workdir / "results.json")) == []

  # compute-matched budgets: different steps, training FLOPs within 1 %
  steps = {f: r["budget"]["steps"] for f, r in runs.items()}
  assert len(set(steps.values())) > 1 and steps["gpt2"] == 60
  for r in runs.values():
    assert (
      r["budget"]["kind"] == "flops"
      and abs(r["final"]["train_flops"] / runs["gpt2"]["final"]["train_flops"] - 1) < 0.01
    )
    assert r["curves"]["val_tokens"][-1] == r["budget"]["tokens"]
  assert results["protocol"]["budget"] == "flops"

  # tier 3 rows and the chance-corrected score
  for r in runs.values():
    assert {"persona_consistency", "topic_threading"} <= set(r["statefulness"]["by_tier"])
    assert set(r["statefulness"]["chance_corrected"]["tiers"]) == {"1", "2", "3"}

  # long context: 2K..32K natively for the recurrent member, labelled modes for the others
  lc = runs["hybrid"]["long_context"]
  assert lc["contexts"] == [2048, 4096, 8192, 16384, 32768]
  assert list(lc["modes"]) == ["native"] and all(v is not None for v in lc["modes"]["native"]["bpb"])
  assert list(runs["gpt2"]["long_context"]["modes"]) == ["window", "sinks"]
  assert "extrapolate" in runs["gpt2"]["long_context"]["skipped"]
  ext = runs["modern"]["long_context"]["modes"]["extrapolate"]["bpb"]
  assert ext[0] is not None and ext[1:] == [None] * 4  # capped at extrapolate_max, and reported as not run
  assert all(v is not None for v in runs["modern"]["long_context"]["modes"]["sinks"]["bpb"])

  # conversational set
  for r in runs.values():
    d = r["dialogue"]
    assert d["dialogues"] == 4 and d["ppl"] > 1 and 0 <= d["bleu"] <= 100 and d["bpb"] > 0

  report = (workdir / "report.md").read_text()
  for heading in (
    "## Training budgets",
    "## Statefulness score (chance-corrected)",
    "## Long context",
    "## Conversational ability",
    "## Reverse test",
  ):
    assert heading in report, heading
  assert "rolling window of 256 tokens incl. 4 attention sinks" in report and "recurrent state (native)" in report
  assert (workdir / "long_context.png").stat().st_size > 1000

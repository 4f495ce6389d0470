"""Evaluation suites on a tiny synthetic data root, tokenizer checks, and the stage table."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.compare import stage_table
from modernlm_jax.eval import suite
from tests.fakes import ByteTokenizer

V = 257
TABLE = jnp.asarray(np.random.default_rng(0).normal(size=(V, V)).astype(np.float32))


def bigram_forward(tokens_BT, positions_BT, segment_ids_BT):
  return TABLE[tokens_BT]


def generate_fn(prompts, max_new_tokens, stop_ids):
  return [list(b"#### 4") + stop_ids[:1] for _ in prompts]


def make_data_root(tmp_path, with_hellaswag=False):
  (tmp_path / "lambada").mkdir()
  (tmp_path / "lambada" / "lambada_test.jsonl").write_text(
    "".join(json.dumps({"text": t}) + "\n" for t in ["the cat sat on the mat", "we went home"])
  )
  (tmp_path / "sst2").mkdir()
  (tmp_path / "sst2" / "dev.tsv").write_text(
    "sentence\tlabel\n"
    + "".join(f"{s}\t{lab}\n" for s, lab in [("good", 1), ("bad", 0), ("fine", 1), ("awful", 0), ("great", 1)])
  )
  (tmp_path / "gsm8k").mkdir()
  (tmp_path / "gsm8k" / "test.jsonl").write_text(
    "".join(
      json.dumps({"question": f"What is {i}+{i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}) + "\n"
      for i in range(1, 8)
    )
  )
  (tmp_path / "tinystories").mkdir()
  (tmp_path / "tinystories" / "tinystories_val.txt").write_text("Once upon a time there was a dog.\n\n" * 20)
  return tmp_path


def test_quick_suite_runs_and_reports_skips(tmp_path):
  root = make_data_root(tmp_path)
  messages = []
  res = suite.run_suite(
    "quick",
    forward_fn=bigram_forward,
    generate_fn=generate_fn,
    tokenizer=ByteTokenizer(),
    context=128,
    data_root=root,
    progress=messages.append,
    ppl_texts={"builtin:valid": "Hello there. " * 30},
  )
  ppl = res["perplexity"]
  assert ppl["builtin:valid"]["tokens"] == len("Hello there. " * 30)
  assert ppl["tinystories:valid"]["bytes"] == len("Once upon a time there was a dog.\n\n" * 20)
  assert math.isclose(
    ppl["tinystories:valid"]["bits_per_byte"] * math.log(2),
    ppl["tinystories:valid"]["nats_per_token"] * ppl["tinystories:valid"]["tokens"] / ppl["tinystories:valid"]["bytes"],
    rel_tol=1e-9,
  )
  assert "skipped" in res["tasks"]["hellaswag"]
  assert res["tasks"]["lambada"]["n"] == 2 and res["tasks"]["sst2"]["n"] == 5
  assert res["tasks"]["gsm8k"]["n"] == 7
  assert res["tasks"]["gsm8k"]["exact_match_strict"] == pytest.approx(1 / 7)  # only 2+2 = 4
  assert res["tasks"]["sst2"]["num_fewshot"] == 4
  assert set(res["statefulness"]["tiers"]) == {
    "short_term_recall",
    "correction",
    "interrupted_recall",
    "composition",
    "persona_consistency",
    "topic_threading",
  }
  assert any(m.startswith("lambada ") and "/" in m for m in messages)
  md = suite.to_markdown(res)
  assert "| tinystories:valid |" in md and "| sst2 | acc |" in md
  assert "- hellaswag: no data for hellaswag" in md
  assert "interrupted_recall @ 50 sentences" in md
  entry = suite.comparison_entry(res)
  assert entry["tasks"] == {
    "lambada": res["tasks"]["lambada"]["acc"],
    "sst2": res["tasks"]["sst2"]["acc"],
    "gsm8k": res["tasks"]["gsm8k"]["exact_match_strict"],
  }
  assert set(entry["statefulness"]["by_distance"]) == {"5", "10", "20", "50"}
  assert entry["statefulness"]["score"] == res["statefulness"]["overall_acc"]


def test_missing_everything_is_skipped_not_crashed(tmp_path):
  res = suite.run_suite(
    "quick",
    forward_fn=bigram_forward,
    generate_fn=None,
    tokenizer=ByteTokenizer(),
    context=64,
    data_root=tmp_path / "absent",
    progress=None,
    ppl_texts={},
  )
  assert all("skipped" in r for r in res["tasks"].values())
  assert "skipped" in res["perplexity"]["tinystories:valid"] and "skipped" in res["perplexity"]["builtin"]
  assert res["statefulness"]["n"] > 0
  assert "Skipped:" in suite.to_markdown(res)


def test_full_suite_demands_gpt2_tokenizer_before_any_compute(tmp_path):
  def must_not_run(*_):
    raise AssertionError("forward_fn called before the tokenizer check")

  with pytest.raises(suite.TokenizerMismatchError, match="require_gpt2_protocol=False"):
    suite.run_suite(
      "full",
      forward_fn=must_not_run,
      generate_fn=None,
      tokenizer=ByteTokenizer("sentencepiece-8k"),
      context=1024,
      data_root=tmp_path,
    )
  with pytest.raises(ValueError, match="unknown suite"):
    suite.run_suite(
      "fast", forward_fn=must_not_run, generate_fn=None, tokenizer=ByteTokenizer(), context=8, data_root=tmp_path
    )


def test_check_tokenizer():
  suite.check_tokenizer(ByteTokenizer("gpt2-bpe-50257"), "gpt2")
  with pytest.raises(suite.TokenizerMismatchError, match="'gpt2'.*'spm-32k'"):
    suite.check_tokenizer(ByteTokenizer("spm-32k"), "gpt2")
  with pytest.raises(suite.TokenizerMismatchError):
    suite.check_tokenizer(object(), "gpt2")


def test_stage_table_deltas():
  stages = {
    "pretrain": {"ppl": 27.03, "sst2_acc": 0.495},
    "sft": {"ppl": 34.14, "sst2_acc": 0.535},
    "dpo": {"ppl": 34.32, "sst2_acc": 0.495},
  }
  d = stage_table.stage_deltas(stages, ["ppl", "sst2_acc"])
  assert "delta_prev" not in d["ppl"][0]
  np.testing.assert_allclose([d["ppl"][1]["delta_prev"], d["ppl"][1]["rel_prev"]], [7.11, 7.11 / 27.03])
  np.testing.assert_allclose([d["ppl"][2]["delta_cum"], d["ppl"][2]["rel_cum"]], [7.29, 7.29 / 27.03])
  np.testing.assert_allclose(d["sst2_acc"][2]["delta_cum"], 0.0, atol=1e-12)
  md = stage_table.stage_table(stages, ["ppl", "sst2_acc"])
  assert "| sft | 34.14 | +7.11 (+26.3%) | +7.11 (+26.3%) |" in md
  assert "| dpo | 34.32 | +0.18 (+0.5%) | +7.29 (+27.0%) |" in md
  assert "| pretrain | 27.03 | — | — |" in md
  with pytest.raises(KeyError, match="lacks metrics"):
    stage_table.stage_deltas(stages, ["bleu"])


def test_stage_table_from_suite_results(tmp_path):
  root = make_data_root(tmp_path)
  results = {}
  for stage, scale in [("pretrain", 1.0), ("sft", 0.5)]:
    fwd = lambda t, p, s, scale=scale: TABLE[t] * scale  # noqa: E731
    results[stage] = suite.run_suite(
      "quick",
      forward_fn=fwd,
      generate_fn=generate_fn,
      tokenizer=ByteTokenizer(),
      context=64,
      data_root=root,
      progress=None,
      ppl_texts={"tiny": "abc abd abe " * 20},
    )
  flat = stage_table.flatten_metrics(results["pretrain"])
  assert "tasks/sst2/acc" in flat and "perplexity/tinystories:valid/bits_per_byte" in flat
  assert "tasks/hellaswag/acc" not in flat  # skipped entries are dropped
  md = stage_table.stage_table(results)
  assert "perplexity/tinystories:valid/perplexity" in md and "statefulness/overall_acc" in md
  assert md.count("| sft |") >= 2

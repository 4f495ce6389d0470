"""The few-shot task registry: a new task is one run function and one entry, and every reader picks it up."""

import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.compare import stage_table
from modernlm_jax.eval import fewshot, suite
from modernlm_jax.eval.fewshot.registry import TASKS, Task, register_task
from modernlm_jax.eval.scoring import score_requests
from tests.fakes import ByteTokenizer

TABLE = jnp.asarray(np.random.default_rng(0).normal(size=(257, 257)).astype(np.float32))


def bigram_forward(tokens_BT, positions_BT, segment_ids_BT):
  return TABLE[tokens_BT]


def run_vowel(forward_fn, tokenizer, path, *, limit, num_fewshot, seed, context, batch_size, progress):
  """Toy task: does the model prefer the vowel that a line names? Lines: "<prompt>\t<answer>"."""
  rows = [line.split("\t") for line in path.read_text().splitlines()][:limit]
  requests = [(tokenizer.encode(p), tokenizer.encode(c)) for p, ans in rows for c in (" a", " e")]
  scores = score_requests(forward_fn, requests, context=context, batch_size=batch_size)
  lp = scores.logprob
  picks = [" a" if lp[2 * i] >= lp[2 * i + 1] else " e" for i in range(len(rows))]
  acc = float(np.mean([p.strip() == ans for p, (_, ans) in zip(picks, rows)]))
  return {"vowel_acc": acc, "n": len(rows), "num_fewshot": num_fewshot, "truncated": 0, "chance": 0.5}


@pytest.fixture
def vowel_task():
  register_task(Task("vowel", ("vowel/items.tsv",), run_vowel, 0, ("vowel_acc",)))
  yield
  TASKS.pop("vowel")


def test_builtin_tasks_are_registered_with_their_headline():
  assert {n: t.headline for n, t in TASKS.items()} == {
    "lambada": "acc",
    "hellaswag": "acc_norm",
    "sst2": "acc",
    "gsm8k": "exact_match_strict",
  }
  assert fewshot.GENERATION_TASKS == {"gsm8k": TASKS["gsm8k"].run}
  with pytest.raises(ValueError, match="needs must be"):
    register_task(Task("bad", ("x",), run_vowel, 0, ("acc",), needs="magic"))


def test_a_new_task_is_one_function_and_one_entry(vowel_task, tmp_path):
  (tmp_path / "vowel").mkdir()
  (tmp_path / "vowel" / "items.tsv").write_text("Say a:\ta\nSay e:\te\nSay a again:\ta\n")
  res = suite.run_suite(
    "quick",
    forward_fn=bigram_forward,
    generate_fn=None,
    tokenizer=ByteTokenizer(),
    context=64,
    data_root=tmp_path,
    progress=None,
    ppl_texts={},
  )
  assert res["tasks"]["vowel"]["n"] == 3 and 0.0 <= res["tasks"]["vowel"]["vowel_acc"] <= 1.0
  assert "| vowel | vowel_acc |" in suite.to_markdown(res)
  assert suite.comparison_entry(res)["tasks"]["vowel"] == res["tasks"]["vowel"]["vowel_acc"]
  flat = stage_table.flatten_metrics(res)
  assert flat["tasks/vowel/vowel_acc"] == res["tasks"]["vowel"]["vowel_acc"]
  assert any(s.endswith("tasks/vowel/vowel_acc") for s in stage_table.headline_suffixes())

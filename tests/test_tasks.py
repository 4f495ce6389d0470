"""Few-shot tasks on tiny synthetic files, checked against brute-force numpy with a bigram model."""

import bz2
import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.eval import fewshot as tasks
from modernlm_jax.eval.fewshot.choice import SST2_QUESTION
from modernlm_jax.eval.fewshot.common import fewshot_indices
from modernlm_jax.eval.fewshot.gsm8k import extract_flexible, extract_strict
from tests.fakes import ByteTokenizer

V = 257
TABLE = np.random.default_rng(0).normal(size=(V, V)).astype(np.float32) * 2.0
LOGP = TABLE - np.log(np.exp(TABLE.astype(np.float64)).sum(-1, keepdims=True))


def bigram_forward(tokens_BT, positions_BT, segment_ids_BT):
  return jnp.asarray(TABLE)[tokens_BT]


def brute(ctx: str, cont: str) -> tuple[float, bool]:
  whole = list((ctx + cont).encode())
  n = len(ctx.encode())
  lp = sum(LOGP[whole[i - 1], whole[i]] for i in range(n, len(whole)))
  greedy = all(int(np.argmax(TABLE[whole[i - 1]])) == whole[i] for i in range(n, len(whole)))
  return lp, greedy


LAMBADA = [
  "the cat sat on the mat",
  "she opened the door and saw her friend",
  "a b c d e",
  "we went home",
  "it rained all day long",
  "he said hello",
]


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_lambada_matches_brute_force(tmp_path):
  path = write_jsonl(tmp_path / "lambada.jsonl", [{"text": t} for t in LAMBADA])
  got = tasks.run_lambada(bigram_forward, ByteTokenizer(), path, context=64, batch_size=4)
  scores = [brute(*(lambda c, w: (c, " " + w))(*t.rsplit(" ", 1))) for t in LAMBADA]
  assert got["n"] == 6 and got["truncated"] == 0
  np.testing.assert_allclose(got["acc"], np.mean([g for _, g in scores]))
  np.testing.assert_allclose(got["perplexity"], math.exp(-np.mean([lp for lp, _ in scores])), rtol=1e-5)
  limited = tasks.run_lambada(bigram_forward, ByteTokenizer(), path, context=64, batch_size=4, limit=2)
  assert limited["n"] == 2


def test_fewshot_prompts_are_seeded_and_exclude_the_example(tmp_path):
  path = write_jsonl(tmp_path / "lambada.jsonl", [{"text": t} for t in LAMBADA])
  tok = ByteTokenizer()
  got = tasks.run_lambada(bigram_forward, tok, path, num_fewshot=2, seed=5, context=16, batch_size=4)
  prompts = tok.seen
  for i, text in enumerate(LAMBADA):
    ctx = text.rsplit(" ", 1)[0]
    full = [s for s in prompts if s.endswith(ctx) and s.count("\n\n") == 2]
    assert full, f"no 2-shot prompt for example {i}"
    assert text not in full[0].split("\n\n")[:2]
  assert got["truncated"] > 0  # context 16 bytes cannot hold 2 shots: left-truncated and counted
  assert fewshot_indices(6, 2, 5, 0) == fewshot_indices(6, 2, 5, 0)
  assert all(0 not in fewshot_indices(6, 5, s, 0) for s in range(20))
  with pytest.raises(ValueError, match="num_fewshot"):
    fewshot_indices(3, 3, 0, 0)


HELLASWAG = [
  ("Cooking: A man cracks an egg. he", 2, ["sings", "runs away fast", "whisks it", "x"]),
  ("Sports: The girl holds a racket. she", 0, ["hits the ball", "eats", "sleeps now", "z"]),
  ("Music: He picks up a guitar. he", 1, ["swims", "plays a song", "cooks", "reads it"]),
]


def hellaswag_brute():
  acc, acc_norm = [], []
  for ctx, label, endings in HELLASWAG:
    lps = np.array([brute(ctx, " " + e)[0] for e in endings])
    acc.append(np.argmax(lps) == label)
    acc_norm.append(np.argmax(lps / np.array([len(e) for e in endings])) == label)
  return np.mean(acc), np.mean(acc_norm)


@pytest.mark.parametrize("layout", ["txt", "txt.bz2", "jsonl"])
def test_hellaswag_layouts_match_brute_force(tmp_path, layout):
  if layout == "jsonl":
    rows = [
      {
        "activity_label": c.split(": ")[0],
        "ctx_a": c.split(": ")[1].rsplit(" ", 1)[0],
        "ctx_b": c.rsplit(" ", 1)[1],
        "endings": e,
        "label": lab,
      }
      for c, lab, e in HELLASWAG
    ]
    path = write_jsonl(tmp_path / "hs.jsonl", rows)
    # The official jsonl capitalises ctx_b, as lm-evaluation-harness does.
    assert tasks.load_hellaswag(path)[0]["query"] == "Cooking: A man cracks an egg. He"
    return
  text = "".join(f"{c}\n{lab}\n" + "".join(e + "\n" for e in ends) for c, lab, ends in HELLASWAG)
  path = tmp_path / f"hs.{layout}"
  path.write_bytes(bz2.compress(text.encode()) if layout.endswith("bz2") else text.encode())
  got = tasks.run_hellaswag(bigram_forward, ByteTokenizer(), path, context=128, batch_size=3)
  acc, acc_norm = hellaswag_brute()
  assert got["n"] == 3 and got["chance"] == 0.25
  np.testing.assert_allclose([got["acc"], got["acc_norm"]], [acc, acc_norm])


SST2 = [
  ("a gorgeous , witty film", 1),
  ("dull and lifeless", 0),
  ("a total mess", 0),
  ("warm and funny", 1),
  ("i loved every minute", 1),
]


def test_sst2_matches_brute_force(tmp_path):
  path = tmp_path / "dev.tsv"
  path.write_text("sentence\tlabel\n" + "".join(f"{s} \t{lab}\n" for s, lab in SST2))
  for k in (0, 2):
    tok = ByteTokenizer()
    got = tasks.run_sst2(bigram_forward, tok, path, num_fewshot=k, seed=1, context=512, batch_size=4)
    # Bigram scores depend only on the last prompt byte, so shots cannot change the answer.
    want = [np.argmax([brute(s + SST2_QUESTION, w)[0] for w in (" negative", " positive")]) == lab for s, lab in SST2]
    np.testing.assert_allclose(got["acc"], np.mean(want))
    assert got["majority_baseline"] == 0.6
    if k:
      assert any(s.count("Question:") == 3 for s in tok.seen)


def gsm_row(q, n):
  return {"question": q, "answer": f"Some reasoning <<1+1=2>>.\n#### {n:,}"}


def test_gsm8k_exact_match_stops_and_truncation(tmp_path):
  write_jsonl(tmp_path / "train.jsonl", [gsm_row(f"Train question {i}?", i) for i in range(4)])
  test = write_jsonl(
    tmp_path / "test.jsonl",
    [gsm_row("How many apples?", 1200), gsm_row("How many pears?", 7), gsm_row("How many plums?", 3)],
  )
  replies = {
    "apples": "So 1,200 in all.\n#### 1,200\n\nQuestion: ignored #### 5",
    "pears": "She has 7 left.\nQuestion: next #### 7",
    "plums": "I think 4",
  }
  tok = ByteTokenizer()
  calls = []

  def generate_fn(prompts, max_new_tokens, stop_ids):
    calls.append((prompts, max_new_tokens, stop_ids))
    outs = []
    for p in prompts:
      text = tok.decode(p)
      key = [k for k in replies if text.rstrip().endswith(f"many {k}?\nAnswer:")][0]
      outs.append(list(replies[key].encode()) + [tok.eos_id])
    return outs

  got = tasks.run_gsm8k(generate_fn, tok, test, num_fewshot=2, seed=0, context=4096, max_new_tokens=32, batch_size=2)
  assert got["n"] == 3 and got["truncated"] == 0
  np.testing.assert_allclose([got["exact_match_strict"], got["exact_match_flexible"]], [1 / 3, 2 / 3])
  assert got["fewshot_source"].endswith("train.jsonl")
  prompt = tok.decode(calls[0][0][0])
  assert prompt.count("Train question") == 2 and calls[0][2] == [tok.eos_id] and len(calls) == 2
  short = tasks.run_gsm8k(generate_fn, tok, test, num_fewshot=2, context=120, max_new_tokens=32)
  assert short["truncated"] == 3 and all(len(p) <= 88 for p in calls[-1][0])
  assert extract_strict("#### -3.50") == "-3.5" and extract_flexible("costs $1,000.") == "1000"


@pytest.mark.parametrize(
  "task,filename,content,field",
  [
    ("lambada", "l.jsonl", '{"txt": "a b"}\n', "'text'"),
    ("gsm8k", "g.jsonl", '{"question": "q?"}\n', "'answer'"),
    ("gsm8k", "g.jsonl", '{"question": "q?", "answer": "no number"}\n', "'answer'"),
    ("sst2", "s.tsv", "sentence\tlbl\nfine\t1\n", "'label'"),
    ("sst2", "s.tsv", "sentence\tlabel\nfine\tpositive\n", "'label'"),
    ("hellaswag", "h.txt", "ctx\n7\na\nb\nc\nd\n", "'label'"),
    ("hellaswag", "h.jsonl", '{"ctx_a": "x", "ctx_b": "y", "endings": [], "label": 0}\n', "'activity_label'"),
  ],
)
def test_missing_fields_name_file_and_field(tmp_path, task, filename, content, field):
  path = tmp_path / filename
  path.write_text(content)
  loader = getattr(tasks, f"load_{task}")
  with pytest.raises(tasks.TaskDataError) as err:
    loader(path)
  assert str(path) in str(err.value) and field in str(err.value)


def test_missing_file_is_clear(tmp_path):
  with pytest.raises(tasks.TaskDataError, match="not found"):
    tasks.load_lambada(tmp_path / "nope.jsonl")
  assert tasks.task_path("sst2", tmp_path) is None


def _shared_data() -> Path:
  return Path(os.environ.get("MODERNLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.shared_data
@pytest.mark.parametrize("name,count", [("lambada", 5153), ("hellaswag", 10042), ("sst2", 872), ("gsm8k", 1319)])
def test_real_task_files_parse(name, count):
  path = tasks.task_path(name, _shared_data())
  if path is None:
    pytest.skip(f"{name} data not present under {_shared_data()}")
  docs = getattr(tasks, f"load_{name}")(path)
  assert len(docs) == count

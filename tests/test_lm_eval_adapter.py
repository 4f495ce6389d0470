"""lm-evaluation-harness backend: per-item log-likelihoods equal our scorer's, and LAMBADA / HellaSwag accuracy
through lm-eval equals our own few-shot tasks' on the same model and items. Local task YAML, no hub.

Needs lm-eval (`pip install -e '.[lmeval]'`); skipped without it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local json data files only: nothing may be downloaded
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from modernlm_jax.data.tokenizers import ByteTokenizer  # noqa: E402
from modernlm_jax.eval.checkpoint_model import EvalModel  # noqa: E402
from modernlm_jax.eval.fewshot import load_hellaswag, load_lambada, run_hellaswag, run_lambada  # noqa: E402
from modernlm_jax.eval.scoring import encode_pair, score_requests  # noqa: E402
from modernlm_jax.lm_eval.adapter import MODEL_NAME, ModernLM  # noqa: E402
from modernlm_jax.model import ModelConfig, init_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 12
CFG = ModelConfig(
  family="modern",
  vocab_size=257,
  max_len=256,
  n_layers=2,
  d_model=32,
  n_heads=4,
  d_ff=64,
  positions="rope",
  norm="rmsnorm",
  mlp="swiglu",
  use_bias=False,
  tie_embeddings=False,
)

LAMBADA_YAML = """task: local_lambada
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
# lm-eval's hellaswag task after its process_docs step (query / choices / label), read from a local file.
HELLASWAG_YAML = """task: local_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
ROLLING_YAML = """task: local_wikitext_like
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""
SYNTHETIC_LAMBADA = [
  "The cat sat on the warm mat and watched the rain fall on the garden",
  "She opened the old wooden door and stepped into the dark hall",
  "He counted the coins twice before he paid the baker for the bread",
  "After the long winter the birds came back to the tall oak tree",
] * 3
SYNTHETIC_HELLASWAG = [
  {
    "query": f"A man is {verb} in the park. He",
    "label": i % 4,
    "endings": ["runs to the gate.", "sits on a bench.", "reads a small book.", "eats an apple."],
  }
  for i, verb in enumerate(["walking", "running", "standing", "jogging"] * 3)
]


@pytest.fixture(scope="module")
def model():
  rng = np.random.default_rng(0)
  abstract = jax.eval_shape(lambda: init_params(CFG, jax.random.key(0)))
  params = jax.tree.map(
    lambda a: (rng.standard_normal(a.shape) * (0.3 if a.ndim > 1 else 0.0) + (a.ndim == 1)).astype(np.float32), abstract
  )
  return EvalModel(params=params, cfg=CFG, tokenizer=ByteTokenizer(), source="random-tiny")


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
  """Task items (the shared LAMBADA / HellaSwag data when present, else built-in ones) in both formats."""
  d = tmp_path_factory.mktemp("tasks")
  shared = Path(os.environ.get("MODERNLM_SHARED_DATA", REPO.parent / "shared" / "data"))
  lambada_src, hella_src = (
    shared / "lambada" / "lambada_test.jsonl",
    shared / "hellaswag" / "hellaswag_val_full.txt.bz2",
  )
  if lambada_src.is_file():
    texts = [c + t for c, t in load_lambada(lambada_src)[:N_ITEMS]]
  else:
    texts = SYNTHETIC_LAMBADA
  items = load_hellaswag(hella_src)[:N_ITEMS] if hella_src.is_file() else SYNTHETIC_HELLASWAG
  (d / "lambada.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  (d / "hellaswag.jsonl").write_text(
    "".join(json.dumps({"query": it["query"], "choices": it["endings"], "label": it["label"]}) + "\n" for it in items)
  )
  # Our own task reader's layout for the same items: 6 lines each (context, gold, 4 endings).
  (d / "hellaswag_ours.txt").write_text(
    "".join("\n".join([it["query"], str(it["label"]), *it["endings"]]) + "\n" for it in items)
  )
  (d / "docs.jsonl").write_text("".join(json.dumps({"text": t * 3}) + "\n" for t in texts[:3]))
  yamls = d / "yaml"
  yamls.mkdir()
  for name, template, data in (
    ("lambada", LAMBADA_YAML, "lambada.jsonl"),
    ("hellaswag", HELLASWAG_YAML, "hellaswag.jsonl"),
    ("rolling", ROLLING_YAML, "docs.jsonl"),
  ):
    (yamls / f"{name}.yaml").write_text(template.format(data=d / data))
  return d


def _evaluate(lm, task_files, tasks):
  return lm_eval.simple_evaluate(
    model=lm,
    tasks=tasks,
    task_manager=TaskManager(include_path=str(task_files / "yaml")),
    log_samples=True,
    num_fewshot=0,
  )


@pytest.mark.slow
def test_lambada_and_hellaswag_through_lm_eval_equal_our_tasks(model, task_files):
  lm = ModernLM(model=model, batch_size=8)
  results = _evaluate(lm, task_files, ["local_lambada", "local_hellaswag"])
  forward = model.forward_fn(CFG.max_len, 8)
  ours_l = run_lambada(forward, model.tokenizer, task_files / "lambada.jsonl", context=CFG.max_len, batch_size=8)
  ours_h = run_hellaswag(forward, model.tokenizer, task_files / "hellaswag_ours.txt", context=CFG.max_len, batch_size=8)
  theirs_l, theirs_h = results["results"]["local_lambada"], results["results"]["local_hellaswag"]
  assert ours_l["n"] == ours_h["n"] == len(results["samples"]["local_lambada"]) == N_ITEMS
  assert theirs_l["acc,none"] == ours_l["acc"]
  assert theirs_l["perplexity,none"] == pytest.approx(ours_l["perplexity"], rel=1e-9)
  assert theirs_h["acc,none"] == ours_h["acc"]
  assert theirs_h["acc_norm,none"] == ours_h["acc_norm"]

  # Per item: lm-eval's recorded log-likelihood is what our scorer gives for the same context / continuation.
  samples = results["samples"]["local_hellaswag"]
  pairs = [encode_pair(model.tokenizer, *args) for s in samples for args in s["arguments"]]
  want = score_requests(forward, pairs, context=CFG.max_len, batch_size=8).logprob
  got = [float(r[0][0]) for s in samples for r in s["resps"]]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
  assert len(set(np.round(got, 3))) > len(samples)  # distinct values: a real comparison, not constants


@pytest.mark.slow
def test_loglikelihood_rolling_scores_every_token_once(model, task_files):
  lm = ModernLM(model=model, batch_size=4, context=64)
  text = (task_files / "lambada.jsonl").read_text().splitlines()[0]
  text = json.loads(text)["text"][:200]  # bytes: fits the 256-token model whole
  ids = model.tokenizer.encode(text)
  (rolled,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
  # With a context that holds the whole text, the rolling score is that text scored once after EOS; with 64 tokens
  # of context it is windowed (every token still scored once, with less context, so the value differs).
  whole = ModernLM(model=model, batch_size=4, context=CFG.max_len)
  (full,) = whole.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
  want = score_requests(
    model.forward_fn(CFG.max_len, 4), [([model.tokenizer.eos_id], ids)], context=CFG.max_len, batch_size=4
  ).logprob[0]
  assert len(ids) + 1 < CFG.max_len
  assert full == pytest.approx(want, abs=1e-9)
  assert rolled != pytest.approx(full, abs=1e-3)  # the short context really windowed
  assert np.isfinite(rolled)
  # The lm-eval task path runs too (word perplexity, bits/byte).
  res = _evaluate(whole, task_files, ["local_wikitext_like"])["results"]["local_wikitext_like"]
  assert res["bits_per_byte,none"] > 0


def test_generate_until_is_greedy_and_stops_at_the_stop_string(model):
  lm = ModernLM(model=model, batch_size=2)
  reqs = [
    Instance("generate_until", {}, ("The cat", {"until": ["\n\n"], "max_gen_toks": 12}), 0),
    Instance("generate_until", {}, ("A dog", {"until": [], "max_gen_toks": 12}), 1),
  ]
  out = lm.generate_until(reqs)
  direct = model.generate_fn(CFG.max_len, 2)([list(b"The cat"), list(b"A dog")], 12, [256])
  eos = model.tokenizer.eos_id
  expect = [model.tokenizer.decode(d[: d.index(eos)] if eos in d else d) for d in direct]
  assert out[1] == expect[1]
  assert out[0] == expect[0].split("\n\n")[0]
  with pytest.raises(ValueError, match="greedily"):
    lm.generate_until([Instance("generate_until", {}, ("x", {"do_sample": True}), 0)])


@pytest.mark.slow
def test_registered_for_the_python_api_and_cli_errors(tmp_path):
  from lm_eval.api.registry import get_model

  assert get_model(MODEL_NAME) is ModernLM
  res = subprocess.run(
    [sys.executable, "-m", "modernlm_jax.lm_eval", "--checkpoint", str(tmp_path / "none"), "--tasks", "x"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert res.returncode == 1 and "does not exist" in res.stderr


@pytest.mark.slow
def test_cli_on_a_params_directory(tmp_path, task_files):
  from modernlm_jax.interop.hf_gpt2 import save_params

  cfg = CFG.replace(vocab_size=50257, d_model=16, n_heads=2, d_ff=32, n_layers=1)  # GPT-2 vocabulary: tokenizer known
  save_params(init_params(cfg, jax.random.key(1)), cfg, tmp_path / "ckpt")
  out = tmp_path / "res.json"
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "modernlm_jax.lm_eval",
      "--checkpoint",
      str(tmp_path / "ckpt"),
      "--tasks",
      "local_lambada",
      "--include_path",
      str(task_files / "yaml"),
      "--limit",
      "4",
      "--batch_size",
      "4",
      "--output_path",
      str(out),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert "local_lambada" in res.stdout
  assert "acc,none" in json.loads(out.read_text())["results"]["local_lambada"]

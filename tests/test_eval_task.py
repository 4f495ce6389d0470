"""The evaluation task: checkpoints from the training loop or an imported params directory -> eval.json/eval.md."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import pytest

from configs import eval as eval_config
from modernlm_jax.data.tokenizers import ByteTokenizer, GPT2Tokenizer
from modernlm_jax.eval import suite
from modernlm_jax.eval.checkpoint_model import (
  EvalCheckpointError,
  EvalTokenizerMismatchError,
  load_eval_model,
)
from modernlm_jax.interop import hf_gpt2
from modernlm_jax.jobs import evaluate
from modernlm_jax.model import LanguageModel, ModelConfig
from modernlm_jax.train.loop import StageData, train
from modernlm_jax.train.synthetic import SyntheticBatches
from tests.train_utils import numpy_init, tiny_config


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory):
  """A 4-step run of a tiny modern model with the byte tokenizer, checkpointed at steps 2 and 4."""
  run = tmp_path_factory.mktemp("run")
  config = tiny_config("modern", steps=4, batch_size=8, seq_len=16, checkpoint_every=2)
  config.model.vocab_size = 260
  config.model.max_len = 32
  it = SyntheticBatches(batch_size=8, seq_len=16, vocab_size=257, seed=0)
  evals = [SyntheticBatches(batch_size=8, seq_len=16, vocab_size=257, seed=1).batch_at(0)]
  train(config, run, StageData(train_iter=it, eval_batches=evals, tokenizer=ByteTokenizer()))
  return run


def eval_cfg(suite_name="quick", **overrides):
  c = eval_config.get_config(suite_name)
  c.update({"batch_size": 4, **overrides})
  return c


def test_config_defaults_and_bad_suite():
  c = eval_config.get_config(None)
  assert (c.task, c.suite, c.context, c.tokenizer.kind) == ("eval", "quick", 0, "")
  with pytest.raises(ValueError, match="quick"):
    eval_config.get_config("fast")


@pytest.mark.slow
def test_load_run_directory_restores_model_and_tokenizer(byte_run):
  m = load_eval_model(byte_run)
  assert m.step == 4 and m.tokenizer.identity == "bytes-v1"
  assert (m.cfg.vocab_size, m.cfg.max_len, m.cfg.positions) == (260, 32, "rope")
  assert load_eval_model(byte_run / "checkpoints" / "2").step == 2


@pytest.mark.slow
def test_forward_fn_pads_to_fixed_shapes_and_matches_apply(byte_run):
  m = load_eval_model(byte_run)
  fwd = m.forward_fn(context=32, batch_size=4)
  tokens = jax.random.randint(jax.random.key(0), (3, 11), 0, 257)
  pos = jnp.broadcast_to(jnp.arange(11), (3, 11))
  seg = jnp.ones((3, 11), jnp.int32)
  got = fwd(tokens, pos, seg)
  chex.assert_shape(got, (3, 11, 260))
  want = LanguageModel(m.cfg).apply({"params": m.params}, tokens, positions=pos, segment_ids=seg)
  chex.assert_trees_all_close(got, want, atol=1e-5)
  fwd(tokens[:, :9], pos[:, :9], seg[:, :9])  # another length in the same 16-bucket: no new shape
  with pytest.raises(ValueError, match="max_len"):
    m.forward_fn(context=64, batch_size=4)


@pytest.mark.slow
def test_generate_fn_left_truncates_and_counts(byte_run):
  m = load_eval_model(byte_run)
  gen = m.generate_fn(context=32, batch_size=4)
  long_prompt = list(range(1, 41))
  out = gen([long_prompt, [5, 6]], 8, [256])
  assert len(out) == 2 and all(len(o) <= 8 for o in out)
  assert m.truncated_prompts == 1
  # The truncated prompt continues exactly like its rightmost 24 tokens would.
  assert gen([long_prompt[-24:]], 8, [256])[0] == out[0]
  assert m.truncated_prompts == 1


def test_tokenizer_mismatch_is_a_clear_error(byte_run):
  with pytest.raises(EvalTokenizerMismatchError, match="trained with tokenizer 'bytes-v1'"):
    load_eval_model(byte_run, tokenizer_cfg={"kind": "gpt2", "path": ""})


def test_missing_checkpoint_names_the_fix(tmp_path):
  with pytest.raises(EvalCheckpointError, match="does not exist"):
    load_eval_model(tmp_path / "nope")
  with pytest.raises(EvalCheckpointError, match="run directory"):
    load_eval_model(tmp_path)


def test_full_suite_refuses_a_non_gpt2_tokenizer(byte_run, tmp_path):
  with pytest.raises(suite.TokenizerMismatchError, match="gpt2"):
    evaluate.run(eval_cfg("full", checkpoint=str(byte_run)), tmp_path / "out")


def test_parse_stages_and_context():
  assert evaluate.parse_stages("pretrain=runs/a, sft=runs/b") == {"pretrain": "runs/a", "sft": "runs/b"}
  with pytest.raises(ValueError, match="name=path"):
    evaluate.parse_stages("runs/a")
  assert evaluate.eval_context(0, 2048) == 1024 and evaluate.eval_context(0, 256) == 256
  with pytest.raises(ValueError, match="max_len"):
    evaluate.eval_context(512, 256)


@pytest.mark.slow
def test_quick_suite_on_run_writes_json_markdown_and_stage_table(byte_run, tmp_path, capsys):
  ckpt = byte_run / "checkpoints"
  cfg = eval_cfg(stages=f"early={ckpt / '2'},late={ckpt / '4'}", data_root=str(tmp_path / "no-data"))
  out = evaluate.run(cfg, tmp_path / "eval")
  saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
  assert set(saved["checkpoints"]) == {str(ckpt / "2"), str(ckpt / "4")}
  res = saved["checkpoints"][str(ckpt / "4")]
  ppl = res["perplexity"]["builtin:validation"]
  assert ppl["tokens"] > 1000 and 1.0 < ppl["perplexity"] < 300
  assert all("skipped" in r for r in res["tasks"].values())  # no data_root: skipped with a reason
  assert res["statefulness"]["n"] > 0 and res["checkpoint"]["step"] == 4
  md = (tmp_path / "eval" / "eval.md").read_text()
  assert "builtin:validation" in md and "# Stages" in md and "Skipped:" in md
  assert md in capsys.readouterr().out
  assert out["stages"]["paths"]["late"] == str(ckpt / "4")


@pytest.mark.slow
def test_full_suite_path_with_a_gpt2_vocabulary_params_dir(tmp_path, monkeypatch):
  """An imported-style params dir (vocab 50257, d_model 32): GPT-2 BPE, context 1024, WikiText-2 protocol."""
  cfg = ModelConfig(vocab_size=50257, max_len=1024, n_layers=1, d_model=32, n_heads=2, d_ff=64, family="gpt2")
  hf_gpt2.save_params(numpy_init(cfg), cfg, tmp_path / "gpt2-like")
  data = tmp_path / "data" / "wikitext2"
  data.mkdir(parents=True)
  (data / "test.txt").write_text(" = Valkyria = \n\n The game began development in 2010 . \n" * 200)
  # The real protocol uses batch 32 of 1024 tokens (6.6 GB of logits at this vocabulary); a small batch and
  # a small probe set keep this test to the code path. The protocol's sequence length is kept.
  spec = suite.SUITES["full"]
  small = dataclasses.replace(spec, corpora=(dataclasses.replace(spec.corpora[0], batch_size=2),), probes_per_tier=1)
  monkeypatch.setitem(suite.SUITES, "full", small)
  monkeypatch.setattr(suite, "_builtin_validation_text", lambda: {})
  out = evaluate.run(
    eval_cfg("full", checkpoint=str(tmp_path / "gpt2-like"), batch_size=2, data_root=str(tmp_path / "data")),
    tmp_path / "eval",
  )
  res = out["checkpoints"][str(tmp_path / "gpt2-like")]
  assert res["tokenizer"] == GPT2Tokenizer().identity and res["context"] == 1024
  wt = res["perplexity"]["wikitext2:test"]
  assert wt["protocol"] == "gpt2" and wt["context"] == 1024 and wt["tokens"] > 2000
  # a random model is near uniform over the vocabulary
  assert 0.5 * 50257 < wt["perplexity"] < 2 * 50257
  assert "word_perplexity" in wt


def test_default_context_is_the_trained_length_and_the_reason_is_given(byte_run):
  m = load_eval_model(byte_run)
  trained = evaluate.trained_length(m)
  assert trained == 16 and m.cfg.max_len == 32
  assert evaluate.eval_context(0, 32, trained) == 16
  assert "trained at (data.seq_len=16)" in evaluate.context_note(16, 32, trained, 0)
  assert "never trained" in evaluate.context_note(32, 32, trained, 32)
  assert evaluate.context_note(32, 32, None, 0) is None


@pytest.mark.slow
def test_eval_text_glob_split_and_stride(byte_run, tmp_path):
  (tmp_path / "a.txt").write_text("hello world " * 20)
  (tmp_path / "b.txt").write_text("goodbye moon " * 20)
  text, files = suite.perplexity.load_text_files(str(tmp_path / "*.txt"))
  assert [f.name for f in files] == ["a.txt", "b.txt"] and "hello" in text and "moon" in text
  assert suite.perplexity.with_split("wikitext2:test", "valid") == "wikitext2:valid"
  assert suite.perplexity.with_split("tinystories:valid", "test") == "tinystories:valid"  # no test split exists
  cfg = eval_cfg(checkpoint=str(byte_run), data_root=str(tmp_path / "no-data"))
  cfg.eval.update(dict(text=str(tmp_path / "*.txt"), stride=8))
  m = load_eval_model(byte_run)
  res = evaluate.evaluate_model(m, cfg, None, progress=None)
  r = res["perplexity"][f"text:{tmp_path / '*.txt'}"]
  assert r["bytes"] == len(text.encode()) and r["context"] == 16 and r["stride"] == 8
  assert "trained at" in res["context_note"]
  with pytest.raises(FileNotFoundError, match="matches no file"):
    evaluate.run(eval_cfg(checkpoint=str(byte_run), eval=dict(text=str(tmp_path / "none*.txt"))), tmp_path / "o")
  bad = eval_cfg(checkpoint=str(byte_run))
  bad.eval.split = "train"
  with pytest.raises(ValueError, match="eval.split"):
    evaluate.run(bad, tmp_path / "o")

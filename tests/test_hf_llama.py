"""Hugging Face Llama / Qwen3 export and import of the modern family: logits equal transformers', offline.

Needs torch, transformers and safetensors (`pip install -e '.[hf]'`); skipped without them.
"""

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from modernlm_jax.interop import hf_gpt2, hf_llama  # noqa: E402
from modernlm_jax.interop.__main__ import main as cli_main  # noqa: E402
from modernlm_jax.model import LanguageModel, init_params  # noqa: E402
from modernlm_jax.model.config import ModelConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4
TEXT = (
  "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
  "foolishness, it was the epoch of belief, it was the epoch of incredulity."
)
BASE = dict(
  family="modern",
  vocab_size=259,
  max_len=192,
  n_layers=2,
  d_model=32,
  n_heads=4,
  d_ff=48,
  positions="rope",
  norm="rmsnorm",
  mlp="swiglu",
  use_bias=False,
  tie_embeddings=False,
)
CONFIGS = {
  "llama-untied": {},
  "llama-tied-eps-theta": dict(tie_embeddings=True, norm_eps=1e-6, rope_theta=500.0),
  "llama-biases": dict(use_bias=True, d_ff=40),
  "qwen3-qk-norm": dict(qk_norm=True, n_heads=2, d_model=48, d_ff=64),
}


def text_tokens():
  return np.asarray([list(TEXT.encode("utf-8"))], dtype=np.int32)  # bytes: real text without a tokenizer file


def far_from_init(cfg, seed=0):
  """Random weights far from init (norm scales, biases too), so any mis-mapped tensor changes the logits."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  return jax.tree.map(
    lambda a: (rng.standard_normal(a.shape) * 0.3 + (1.0 if a.ndim == 1 else 0.0)).astype(np.float32), abstract
  )


@functools.partial(jax.jit, static_argnums=1)
def _ours(params, cfg, tokens_BT):
  return LanguageModel(cfg).apply({"params": params}, tokens_BT)


def hf_logits(model, tokens_BT):
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens_BT)).long()).logits.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_logits_match_transformers_and_roundtrip_is_exact(name, tmp_path):
  cfg = ModelConfig(**{**BASE, **CONFIGS[name]})
  params = far_from_init(cfg)
  hf_llama.export_hf_llama(params, cfg, tmp_path / "hf")
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  assert type(model).__name__ == ("Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM")
  tokens = text_tokens()
  ours, theirs = np.asarray(_ours(params, cfg, tokens)), hf_logits(model, tokens)
  assert np.abs(ours).max() > 1.0  # not a degenerate all-zero comparison
  np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)
  # transformers' own save -> our import: every parameter bit-identical, the config the same.
  model.save_pretrained(tmp_path / "resaved")
  back, back_cfg = hf_llama.import_hf_llama(tmp_path / "resaved")
  assert back_cfg == cfg
  flat, flat_back = jax.tree_util.tree_leaves_with_path(params), dict(jax.tree_util.tree_leaves_with_path(back))
  assert len(flat) == len(flat_back)
  for path, leaf in flat:
    np.testing.assert_array_equal(np.asarray(leaf), flat_back[path], err_msg=jax.tree_util.keystr(path))


def test_import_of_a_transformers_initialised_llama(tmp_path):
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=259,
    hidden_size=32,
    intermediate_size=56,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
  )
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  params, cfg = hf_llama.import_hf_llama(tmp_path)
  assert (cfg.d_ff, cfg.norm_eps, cfg.tie_embeddings) == (56, 1e-5, False)
  np.testing.assert_allclose(
    np.asarray(_ours(params, cfg, text_tokens())), hf_logits(model, text_tokens()), atol=ATOL, rtol=0
  )


@pytest.mark.parametrize(
  "override, named",
  [
    (dict(attn_gate="headwise"), "model.attn_gate"),
    (dict(attn_sinks=True), "model.attn_sinks"),
    (dict(positions="alibi"), "model.positions"),
    (dict(positions="rope+alibi"), "ALiBi"),
    (dict(layer_pattern=("attn", "ssm")), "model.layer_pattern"),
    (dict(norm="layernorm"), "model.norm"),
    (dict(qk_norm=True, use_bias=True), "model.qk_norm"),
  ],
)
def test_options_without_hf_equivalent_are_refused_by_name(override, named, tmp_path):
  cfg = ModelConfig(**{**BASE, **override})
  with pytest.raises(hf_gpt2.CheckpointError, match=named.replace("+", r"\+")):
    hf_llama.export_hf_llama({}, cfg, tmp_path)  # refused before the parameters are looked at
  assert not (tmp_path / "model.safetensors").exists()


def test_an_unknown_model_flag_is_refused(monkeypatch):
  # A ModelConfig field the export does not map (simulated by forgetting one) must not be dropped silently.
  monkeypatch.setattr(hf_llama, "_MAPPED", hf_llama._MAPPED - {"rope_theta"})
  with pytest.raises(hf_gpt2.CheckpointError, match="model.rope_theta=500.0"):
    hf_llama.architecture_for(ModelConfig(**{**BASE, "rope_theta": 500.0}))
  hf_llama.architecture_for(ModelConfig(**BASE))  # at its default the field changes nothing


def test_import_refuses_grouped_query_attention_and_rope_scaling():
  hf = hf_llama.hf_config_from(ModelConfig(**BASE))
  with pytest.raises(hf_gpt2.CheckpointError, match="num_key_value_heads=2"):
    hf_llama.config_from_hf({**hf, "num_key_value_heads": 2})
  with pytest.raises(hf_gpt2.CheckpointError, match="rope_type='llama3'"):
    hf_llama.config_from_hf({**hf, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}})
  with pytest.raises(hf_gpt2.CheckpointError, match="model_type='mistral'"):
    hf_llama.config_from_hf({**hf, "model_type": "mistral"})


def test_cli_import_picks_llama_from_model_type(tmp_path, capsys):
  cfg = ModelConfig(**BASE)
  params = far_from_init(cfg, seed=1)
  hf_llama.export_hf_llama(params, cfg, tmp_path / "hf")
  assert cli_main(["import", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
  back, back_cfg = hf_gpt2.load_params(tmp_path / "ours")
  assert back_cfg == cfg
  np.testing.assert_array_equal(back["layer_1"]["mlp"]["wo"]["kernel"], params["layer_1"]["mlp"]["wo"]["kernel"])
  # ... and export of the imported directory picks the Llama layout again.
  assert cli_main(["export", "--params", str(tmp_path / "ours"), "--out-dir", str(tmp_path / "again")]) == 0
  assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == "llama"
  assert (
    cli_main(["export", "--params", str(tmp_path / "ours"), "--format", "gpt2", "--out-dir", str(tmp_path / "g")]) == 1
  )
  assert "cannot be exported as GPT-2" in capsys.readouterr().err


@pytest.mark.slow
def test_trained_modern_tiny_run_exports_and_transformers_generates(tmp_path):
  """The main job trains modern-tiny (SentencePiece tokenizer); its run directory and one checkpoints/<step>
  export; transformers' tokenizer, logits and greedy generation agree with ours."""
  run = tmp_path / "run"
  train = [
    sys.executable,
    "-m",
    "modernlm_jax.main",
    f"--config={REPO}/configs/pretrain.py",
    f"--workdir={run}",
    "--config.train.steps=12",
    "--config.train.checkpoint_every=6",
    "--config.train.eval_every=12",
    "--config.train.batch_size=8",
    "--config.data.seq_len=64",
    "--config.train.eval_batches=1",
    "--config.train.log_every=6",
    "--config.sample.max_new_tokens=4",
  ]
  res = subprocess.run(train, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert res.returncode == 0, res.stderr[-3000:]
  export = [
    sys.executable,
    "-m",
    "modernlm_jax.interop",
    "export",
    "--run",
    str(run),
    "--out-dir",
    str(tmp_path / "hf"),
  ]
  res = subprocess.run(export, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "LlamaForCausalLM" in res.stdout and "tokenizer.model" in res.stdout
  assert cli_main(["export", "--run", str(run / "checkpoints" / "6"), "--out-dir", str(tmp_path / "hf6")]) == 0

  from modernlm_jax.eval.checkpoint_model import load_eval_model

  ours = load_eval_model(run)
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  ids = tok(TEXT, add_special_tokens=False)["input_ids"]
  assert ids == ours.tokenizer.encode(TEXT)
  tokens = np.asarray([ids], np.int32)
  np.testing.assert_allclose(
    hf_logits(model, tokens), np.asarray(_ours(ours.params, ours.cfg, tokens)), atol=ATOL, rtol=0
  )
  prompt = tok("Once upon a time", return_tensors="pt", add_special_tokens=False)
  out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
  assert out.shape[1] == prompt["input_ids"].shape[1] + 8 or int(out[0, -1]) == ours.tokenizer.eos_id
  assert tok.decode(out[0]).startswith("Once upon a time")
  step6 = hf_llama.import_hf_llama(tmp_path / "hf6")[0]
  assert not np.array_equal(step6["embed"]["embedding"], np.asarray(ours.params["embed"]["embedding"]))

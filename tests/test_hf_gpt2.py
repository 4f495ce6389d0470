"""Hugging Face GPT-2 import/export: logits match transformers in float32, both directions, offline.

Needs torch, transformers and safetensors (`pip install -e '.[hf]'`); skipped without them.
"""

import functools
import json
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from modernlm_jax.interop import hf_gpt2  # noqa: E402
from modernlm_jax.interop.__main__ import main as cli_main  # noqa: E402
from modernlm_jax.model import LanguageModel, init_params  # noqa: E402
from modernlm_jax.model.config import ModelConfig  # noqa: E402

TINY_HF = dict(n_layer=2, n_embd=32, n_head=4, n_positions=24, vocab_size=67)
ATOL = 1e-4


def tiny_hf_model(seed=0, **overrides):
  """A random GPT2LMHeadModel with every weight (biases, norms too) far from its init: a mis-mapped tensor shows."""
  torch.manual_seed(seed)
  config = transformers.GPT2Config(**{**TINY_HF, **overrides}, bos_token_id=0, eos_token_id=0)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return model


def hf_logits(model, tokens_BT):
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens_BT)).long()).logits.numpy()


@functools.partial(jax.jit, static_argnums=1)
def _our_logits_jit(params, cfg, tokens_BT):
  return LanguageModel(cfg).apply({"params": params}, tokens_BT)


def our_logits(params, cfg, tokens_BT):
  return np.asarray(_our_logits_jit(params, cfg, tokens_BT))


def random_tokens(vocab, b=2, t=TINY_HF["n_positions"], seed=3):
  return np.random.default_rng(seed).integers(0, vocab, (b, t), dtype=np.int32)


@pytest.fixture(scope="module")
def hf_model():
  return tiny_hf_model()


@pytest.fixture(scope="module")
def saved_dir(hf_model, tmp_path_factory):
  d = tmp_path_factory.mktemp("hf_tiny")
  hf_model.save_pretrained(d)
  return d


@pytest.mark.slow
class TestImport:
  # Eager (no-jit) runs dispatch op by op and are slow on 2 cores, so one kernel covers that variant.
  @pytest.mark.slow
  @pytest.mark.parametrize("impl,jitted", [("reference", True), ("xla", True), ("reference", False)])
  def test_safetensors_logits_match(self, hf_model, saved_dir, impl, jitted):
    params, cfg = hf_gpt2.import_hf_gpt2(saved_dir, attention_impl=impl)
    assert cfg.family == "gpt2" and cfg.attention_impl == impl and cfg.tie_embeddings
    chex.assert_shape(params["layer_0"]["mixer"]["query_kernel"], (32, 4, 8))
    tokens = random_tokens(cfg.vocab_size)
    with chex.fake_jit(enable_patching=not jitted):  # chex's without-jit variant, usable from plain pytest
      forward = jax.jit(lambda p, t: LanguageModel(cfg).apply({"params": p}, t))
      ours = np.asarray(forward(params, tokens))
    theirs = hf_logits(hf_model, tokens)
    chex.assert_shape(ours, (2, TINY_HF["n_positions"], TINY_HF["vocab_size"]))
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)

  def test_torch_state_dict_and_prefixless_names(self, hf_model, tmp_path):
    # Old hub checkpoints are pytorch_model.bin; GPT2Model ones have no "transformer." prefix and carry mask buffers.
    hf_model.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 24, 24))
    torch.save(state, tmp_path / "pytorch_model.bin")
    params, cfg = hf_gpt2.import_hf_gpt2(tmp_path, attention_impl="reference")
    tokens = random_tokens(cfg.vocab_size, seed=5)
    np.testing.assert_allclose(our_logits(params, cfg, tokens), hf_logits(hf_model, tokens), atol=ATOL, rtol=0)

  def test_untied_head_and_custom_inner_width(self, tmp_path):
    model = tiny_hf_model(seed=1, tie_word_embeddings=False, n_inner=48)
    model.save_pretrained(tmp_path)
    params, cfg = hf_gpt2.import_hf_gpt2(tmp_path, attention_impl="xla")
    assert not cfg.tie_embeddings and cfg.d_ff == 48
    chex.assert_shape(params["lm_head"], (32, TINY_HF["vocab_size"]))
    assert not np.allclose(params["lm_head"], params["embed"]["embedding"].T)
    tokens = random_tokens(cfg.vocab_size, seed=7)
    np.testing.assert_allclose(our_logits(params, cfg, tokens), hf_logits(model, tokens), atol=ATOL, rtol=0)

  def test_bfloat16_safetensors_import_without_torch_path(self, hf_model, tmp_path, monkeypatch):
    import ml_dtypes
    from safetensors.numpy import save_file

    hf_model.config.save_pretrained(tmp_path)
    state = {k: v.numpy().astype(ml_dtypes.bfloat16) for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    monkeypatch.setattr(hf_gpt2, "_load_torch", lambda path: pytest.fail("safetensors import must not touch torch"))
    params, _ = hf_gpt2.import_hf_gpt2(tmp_path)
    assert params["embed"]["embedding"].dtype == np.float32
    np.testing.assert_array_equal(params["pos_embed"], state["transformer.wpe.weight"].astype(np.float32))

  def test_sharded_safetensors(self, hf_model, tmp_path):
    from safetensors.numpy import save_file

    hf_model.config.save_pretrained(tmp_path)
    state = {k: v.numpy() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    names = sorted(state)
    weight_map = {}
    for shard, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
      file = f"model-0000{shard + 1}-of-00002.safetensors"
      save_file({k: state[k] for k in part}, str(tmp_path / file), metadata={"format": "pt"})
      weight_map.update({k: file for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    params, cfg = hf_gpt2.import_hf_gpt2(tmp_path)
    ref = hf_gpt2.hf_state_to_params(hf_gpt2.normalize_hf_names(state), cfg)
    chex.assert_trees_all_equal(params, ref)


class TestExport:
  def test_roundtrip_through_transformers(self, saved_dir, hf_model, tmp_path):
    params, cfg = hf_gpt2.import_hf_gpt2(saved_dir, attention_impl="xla")
    # Perturb so the exported model differs from the imported one: the check is on our weights, not a copied file.
    params = jax.tree.map(lambda x: x + 0.01, params)
    out = hf_gpt2.export_hf_gpt2(params, cfg, tmp_path / "export", eos_token_id=0)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert reloaded.dtype == torch.float32
    tokens = random_tokens(cfg.vocab_size, seed=11)
    ours = our_logits(params, cfg, tokens)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), ours, atol=ATOL, rtol=0)
    assert np.abs(ours - hf_logits(hf_model, tokens)).max() > 1e-2

  def test_export_our_init_untied(self, tmp_path):
    cfg = ModelConfig(
      family="gpt2",
      vocab_size=61,
      max_len=16,
      n_layers=2,
      d_model=32,
      n_heads=2,
      d_ff=80,
      tie_embeddings=False,
      attention_impl="reference",
    )
    # Random values on our own tree (shapes only from the model; a real init compiles far longer than this test).
    rng = np.random.default_rng(4)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.2, s.shape).astype(np.float32), shapes)
    out = hf_gpt2.export_hf_gpt2(params, cfg, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["n_inner"] == 80 and config["tie_word_embeddings"] is False and config["eos_token_id"] is None
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    tokens = random_tokens(61, t=16, seed=2)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), our_logits(params, cfg, tokens), atol=ATOL, rtol=0)

  def test_state_roundtrip_is_exact(self, saved_dir):
    params, cfg = hf_gpt2.import_hf_gpt2(saved_dir)
    state = hf_gpt2.params_to_hf_state(params, cfg)
    again = hf_gpt2.hf_state_to_params(hf_gpt2.normalize_hf_names(state), cfg)
    chex.assert_trees_all_equal(params, again)


class TestErrors:
  def test_missing_directory_and_files(self, tmp_path):
    with pytest.raises(hf_gpt2.CheckpointError, match="not a directory"):
      hf_gpt2.import_hf_gpt2(tmp_path / "nope")
    with pytest.raises(hf_gpt2.CheckpointError, match="config.json is missing"):
      hf_gpt2.import_hf_gpt2(tmp_path)
    transformers.GPT2Config(**TINY_HF).save_pretrained(tmp_path)
    with pytest.raises(hf_gpt2.CheckpointError, match="no weights in .*model.safetensors"):
      hf_gpt2.import_hf_gpt2(tmp_path)

  def test_non_gpt2_architecture(self, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(hf_gpt2.CheckpointError, match="model_type='llama'.*only GPT-2"):
      hf_gpt2.import_hf_gpt2(tmp_path)

  def test_exact_gelu_is_rejected(self):
    with pytest.raises(hf_gpt2.CheckpointError, match="activation_function='gelu'"):
      hf_gpt2.config_from_hf({**TINY_HF, "model_type": "gpt2", "activation_function": "gelu"})

  def test_shape_mismatch_names_the_tensor(self, saved_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    config = json.loads((saved_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = load_file(str(saved_dir / "model.safetensors"))
    state["transformer.h.1.mlp.c_fc.weight"] = state["transformer.h.1.mlp.c_fc.weight"][:, :100]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hf_gpt2.CheckpointError, match=r"'h\.1\.mlp\.c_fc\.weight'.*\(32, 100\).*\(32, 128\)"):
      hf_gpt2.import_hf_gpt2(tmp_path)

  def test_missing_and_unexpected_tensors(self, saved_dir):
    params, cfg = hf_gpt2.import_hf_gpt2(saved_dir)
    state = hf_gpt2.normalize_hf_names(hf_gpt2.params_to_hf_state(params, cfg))
    with pytest.raises(hf_gpt2.CheckpointError, match="missing 1 tensor.*ln_f.bias"):
      hf_gpt2.hf_state_to_params({k: v for k, v in state.items() if k != "ln_f.bias"}, cfg)
    with pytest.raises(hf_gpt2.CheckpointError, match="does not use.*score.weight"):
      hf_gpt2.hf_state_to_params({**state, "score.weight": np.zeros((2, 32))}, cfg)

  def test_export_rejects_modern_family(self, tmp_path):
    cfg = ModelConfig(
      vocab_size=61,
      max_len=16,
      n_layers=1,
      d_model=32,
      n_heads=2,
      d_ff=64,
      positions="rope",
      norm="rmsnorm",
      mlp="swiglu",
      use_bias=False,
    )
    with pytest.raises(hf_gpt2.CheckpointError, match="positions='rope'.*norm='rmsnorm'.*Only the gpt2 family"):
      hf_gpt2.export_hf_gpt2({}, cfg, tmp_path)  # the config check comes before any parameter is read

  def test_export_params_config_mismatch_names_parameter(self, saved_dir, tmp_path):
    params, cfg = hf_gpt2.import_hf_gpt2(saved_dir)
    with pytest.raises(hf_gpt2.CheckpointError, match=r"parameter \['pos_embed'\] has shape \(24, 32\).*\(48, 32\)"):
      hf_gpt2.export_hf_gpt2(params, cfg.replace(max_len=48), tmp_path)


@pytest.mark.slow
class TestCommand:
  def test_import_then_export_via_cli(self, saved_dir, hf_model, tmp_path, capsys):
    assert cli_main(["import", "--hf-dir", str(saved_dir), "--out", str(tmp_path / "ours")]) == 0
    assert "wrote" in capsys.readouterr().out
    params, cfg = hf_gpt2.load_params(tmp_path / "ours")
    assert cfg == hf_gpt2.config_from_hf(json.loads((saved_dir / "config.json").read_text()))
    assert cli_main(["export", "--params", str(tmp_path / "ours"), "--out-dir", str(tmp_path / "hf")]) == 0
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tokens = random_tokens(cfg.vocab_size, seed=13)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens), atol=ATOL, rtol=0)

  def test_safetensors_import_runs_without_torch(self, saved_dir, tmp_path):
    # A fresh process where `import torch` fails: the safetensors path must never reach for it.
    out = tmp_path / "no_torch"
    code = (
      "import sys; sys.modules['torch'] = None; from modernlm_jax.interop.__main__ import main; "
      f"sys.exit(main(['import', '--hf-dir', {str(saved_dir)!r}, '--out', {str(out)!r}]))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "architecture matches no built-in preset" in res.stdout and (out / "params.msgpack").is_file()

  def test_msgpack_file_output_and_sidecar_config(self, saved_dir, tmp_path):
    assert cli_main(["import", "--hf-dir", str(saved_dir), "--out", str(tmp_path / "w.msgpack")]) == 0
    assert (tmp_path / "w.msgpack").is_file() and (tmp_path / "w.model_config.json").is_file()
    (tmp_path / "w.model_config.json").unlink()
    assert cli_main(["export", "--params", str(tmp_path / "w.msgpack"), "--out-dir", str(tmp_path / "hf")]) == 1

  def test_export_with_wrong_preset_fails_cleanly(self, saved_dir, tmp_path, capsys):
    hf_gpt2.save_params(*hf_gpt2.import_hf_gpt2(saved_dir), tmp_path / "p.msgpack")
    rc = cli_main(
      ["export", "--params", str(tmp_path / "p.msgpack"), "--preset", "gpt2-tiny", "--out-dir", str(tmp_path / "hf")]
    )
    assert rc == 1 and "does not match the model config" in capsys.readouterr().err

  def test_help_and_missing_arguments(self, capsys):
    with pytest.raises(SystemExit) as e:
      cli_main(["--help"])
    assert e.value.code == 0 and "import" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
      cli_main(["import", "--out", "x"])
    assert e.value.code == 2 and "--hf-dir" in capsys.readouterr().err


def test_matching_preset_recognises_gpt2_small():
  cfg = hf_gpt2.config_from_hf(
    {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
  )
  assert hf_gpt2.matching_preset(cfg) == "gpt2-125m"
  assert hf_gpt2.matching_preset(cfg.replace(n_layers=11)) is None

"""`python -m modernlm_jax.generate`: prompts from flags and files, greedy equals `generate()`, streaming sinks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from modernlm_jax.data.tokenizers import GPT2Tokenizer
from modernlm_jax.generate import generate
from modernlm_jax.generate_cli import main
from modernlm_jax.interop.hf_gpt2 import save_params
from modernlm_jax.model import ModelConfig, init_params

REPO = Path(__file__).resolve().parents[1]
# GPT-2's vocabulary, so a params directory needs no tokenizer file.
CFG = ModelConfig(
  family="modern",
  vocab_size=50257,
  max_len=32,
  n_layers=1,
  d_model=16,
  n_heads=2,
  d_ff=32,
  positions="rope",
  norm="rmsnorm",
  mlp="swiglu",
  use_bias=False,
  tie_embeddings=True,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  d = tmp_path_factory.mktemp("gen") / "ckpt"
  params = init_params(CFG, jax.random.key(0))
  save_params(params, CFG, d)
  return d, params


@pytest.mark.slow
def test_greedy_prompts_from_flags_and_file_equal_generate(ckpt, tmp_path, capsys):
  d, params = ckpt
  (tmp_path / "p.txt").write_text("A third one\n\nline\\nbreak\n")
  argv = [
    "--checkpoint",
    str(d),
    "--prompt",
    "Once upon a time",
    "--prompt",
    "The",
    "--prompts_file",
    str(tmp_path / "p.txt"),
    "--temperature",
    "0",
    "--max_new_tokens",
    "6",
    "--batch_size",
    "2",
    "--jsonl",
    "--no_stop",
  ]
  assert main(argv) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["prompt"] for r in rows] == ["Once upon a time", "The", "A third one", "line\nbreak"]
  tok = GPT2Tokenizer()
  want = generate(params, CFG, [tok.encode("The"), tok.encode("A third one")], max_new_tokens=6, cache_len=32)
  assert [r["completion"] for r in rows[1:3]] == [tok.decode(w) for w in want]
  assert all(r["tokens"] == 6 for r in rows)


@pytest.mark.slow
def test_stream_sinks_generate_past_the_cache_and_sampling_is_seeded(ckpt, capsys):
  d, _ = ckpt
  base = ["--checkpoint", str(d), "--prompt", "Hello", "--max_new_tokens", "40", "--jsonl", "--no_stop"]
  assert main(base + ["--stream_sinks", "4", "--cache_len", "16", "--temperature", "0"]) == 0
  assert json.loads(capsys.readouterr().out)["tokens"] == 40  # 40 > 16 cache slots: the window rolled
  assert main(base[:-2] + ["--max_new_tokens", "40"]) == 1  # a linear cache of 32 cannot hold 40 new tokens
  assert "--stream_sinks" in capsys.readouterr().err
  outs = []
  for seed in ("1", "1", "2"):
    assert (
      main(
        base[:4]
        + ["--max_new_tokens", "8", "--jsonl", "--no_stop", "--seed", seed, "--temperature", "1.5", "--top_k", "0"]
      )
      == 0
    )
    outs.append(json.loads(capsys.readouterr().out)["completion"])
  assert outs[0] == outs[1] != outs[2]


@pytest.mark.slow
def test_bad_inputs_are_clear_errors(ckpt, tmp_path, capsys):
  d, _ = ckpt
  assert main(["--checkpoint", str(d)]) == 1
  assert "no prompt" in capsys.readouterr().err
  assert main(["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"]) == 1
  assert "does not exist" in capsys.readouterr().err
  assert main(["--checkpoint", str(d), "--prompt", "x", "--top_p", "0"]) == 1


@pytest.mark.slow
def test_module_and_console_forms(ckpt):
  d, _ = ckpt
  cmd = [
    sys.executable,
    "-m",
    "modernlm_jax.generate",
    "--checkpoint",
    str(d),
    "--prompt",
    "Hi",
    "--temperature",
    "0",
    "--max_new_tokens",
    "3",
    "--no_stop",
  ]
  res = subprocess.run(
    cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}
  )
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.startswith("Hi")

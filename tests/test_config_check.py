"""Bad settings are refused before any work, each with its key and valid range (config_check.py); no training."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modernlm_jax.config_check import ConfigError, check_config, check_override_keys

ROOT = Path(__file__).resolve().parents[1]


def load(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


SHIPPED = [
  ("pretrain", None),
  ("pretrain", "gpt2-tiny"),
  ("pretrain", "modern-3.5m"),
  ("pretrain", "gpt2-125m"),
  ("sft", None),
  ("dpo", None),
  ("eval", None),
  ("eval", "full"),
  ("compare", "smoke"),
  ("compare", "tiny"),
  ("compare", "seed004"),
  ("compare", "ablate-seqlen"),
  ("compare", "ablate-positions"),
  ("bench", None),
]


@pytest.mark.parametrize("name,arg", SHIPPED)
def test_every_shipped_config_passes(name, arg):
  check_config(load(name, arg))


# case -> (config file, {dotted key: value}, pattern the refusal must contain)
BAD = {
  "steps_zero": ("pretrain", {"train.steps": 0}, r"train\.steps=0 is out of range: valid is \[1, inf\)"),
  "negative_lr": ("pretrain", {"train.lr": -1e-3}, r"train\.lr=-0\.001 is out of range: valid is \(0, inf\)"),
  "zero_lr": ("pretrain", {"train.lr": 0.0}, r"train\.lr=0\.0 is out of range: valid is \(0, inf\)"),
  "negative_warmup": ("pretrain", {"train.warmup_steps": -5}, r"train\.warmup_steps=-5 is out of range"),
  "zero_log_every": ("pretrain", {"train.log_every": 0}, r"train\.log_every=0 is out of range: valid is \[1, inf\)"),
  "negative_eval_every": ("pretrain", {"train.eval_every": -1}, r"train\.eval_every=-1 is out of range"),
  "zero_checkpoint_every": ("pretrain", {"train.checkpoint_every": 0}, r"train\.checkpoint_every=0 is out of range"),
  "keep_checkpoints_zero": (
    "pretrain",
    {"train.keep_checkpoints": 0},
    r"train\.keep_checkpoints=0 .*0 would delete every checkpoint",
  ),
  "negative_checkpoint_minutes": ("pretrain", {"train.checkpoint_minutes": -1.0}, r"train\.checkpoint_minutes=-1\.0"),
  "accum_not_dividing": (
    "pretrain",
    {"train.accum_steps": 3},
    r"train\.batch_size=16 must be divisible by train\.accum_steps=3",
  ),
  "b2_one": ("pretrain", {"train.b2": 1.0}, r"train\.b2=1\.0 is out of range: valid is \[0, 1\)"),
  "min_lr_ratio_above_one": ("pretrain", {"train.min_lr_ratio": 2.0}, r"train\.min_lr_ratio=2\.0 .*\[0, 1\]"),
  "negative_weight_decay": ("pretrain", {"train.weight_decay": -0.1}, r"train\.weight_decay=-0\.1"),
  "unknown_schedule": ("pretrain", {"train.schedule": "linear"}, r"train\.schedule='linear' is not valid"),
  "nan_lr": ("pretrain", {"train.lr": float("nan")}, r"train\.lr=nan is out of range"),
  "seq_len_over_max_len_modern": (
    "pretrain",
    {"data.seq_len": 4096},
    r"data\.seq_len=4096 is out of range: valid is \[1, 256\] \(the model's "
    r"model\.max_len=256",
  ),
  "seq_len_over_max_len_gpt2": ("pretrain:gpt2-tiny", {"data.seq_len": 1024}, r"data\.seq_len=1024 .*max_len=256"),
  "seq_len_over_max_len_sft": ("sft", {"data.seq_len": 512}, r"data\.seq_len=512 .*max_len=256"),
  "seq_len_over_max_len_dpo": ("dpo", {"data.seq_len": 300}, r"data\.seq_len=300 .*max_len=256"),
  "seq_len_over_max_len_compare_member": (
    "compare:smoke",
    {"data.seq_len": 300},
    r"data\.seq_len=300 exceeds the max_len=256 of compare member gpt2 at "
    r"scale tiny",
  ),
  "seq_len_schedule_beyond_seq_len": (
    "pretrain",
    {"data.seq_len_schedule": "64:10,256"},
    r"data\.seq_len_schedule length 256 must be in \[1, data\.seq_len=128\]",
  ),
  "negative_num_epochs": ("pretrain", {"data.num_epochs": -1}, r"data\.num_epochs=-1"),
  "float16_model": ("pretrain", {"model.dtype": "float16"}, r"model\.dtype='float16' is not supported"),
  "float16_bench": ("bench", {"bench.dtype": "float16"}, r"bench\.dtype='float16' is not valid"),
  "top_p_zero": ("pretrain", {"sample.top_p": 0.0}, r"sample\.top_p=0\.0 is out of range: valid is \(0, 1\]"),
  "top_p_above_one": ("pretrain", {"sample.top_p": 1.5}, r"sample\.top_p=1\.5"),
  "negative_temperature": ("pretrain", {"sample.temperature": -1.0}, r"sample\.temperature=-1\.0"),
  "negative_top_k": ("pretrain", {"sample.top_k": -3}, r"sample\.top_k=-3"),
  "max_new_tokens_over_max_len": (
    "pretrain",
    {"sample.max_new_tokens": 256},
    r"sample\.max_new_tokens=256 is out of range: valid is \[1, 255\]",
  ),
  "zero_max_new_tokens": ("sft", {"sample.max_new_tokens": 0}, r"sample\.max_new_tokens=0"),
  "negative_dpo_beta": ("dpo", {"dpo.beta": -0.1}, r"dpo\.beta=-0\.1 is out of range: valid is \(0, inf\)"),
  "zero_dpo_beta": ("dpo", {"dpo.beta": 0.0}, r"dpo\.beta=0\.0"),
  "val_fraction_one": ("sft", {"data.val_fraction": 1.0}, r"data\.val_fraction=1\.0 .*\(0, 1\)"),
  "min_prompt_tokens_over_seq_len": ("sft", {"data.min_prompt_tokens": 256}, r"data\.min_prompt_tokens=256"),
  "eval_batch_size_zero": ("eval", {"batch_size": 0}, r"batch_size=0 is out of range: valid is \[1, inf\)"),
  "eval_negative_context": ("eval", {"context": -1}, r"context=-1"),
  "compare_eval_batch_zero": ("compare:smoke", {"compare.eval_batch_size": 0}, r"compare\.eval_batch_size=0"),
  "compare_bad_distances": (
    "compare:smoke",
    {"compare.probes.distances": "2,0,x"},
    r"compare\.probes\.distances='2,0,x': '0' is not a positive integer",
  ),
  "compare_zero_overfit_lr": ("compare:smoke", {"compare.smoke.overfit_lr": 0.0}, r"compare\.smoke\.overfit_lr=0\.0"),
  "compare_bad_remeasure": ("compare:smoke", {"compare.remeasure": "speed"}, r"compare\.remeasure='speed'"),
  "compare_data_fraction_zero": (
    "compare:smoke",
    {"compare.smoke.data_fraction": 0.0},
    r"compare\.smoke\.data_fraction=0\.0",
  ),
  "compare_zero_repeats": (
    "compare:smoke",
    {"compare.inference.decode_repeats": 0},
    r"compare\.inference\.decode_repeats=0",
  ),
  "bench_seq_len_over_max_len": ("bench:gpt2-tiny", {"bench.seq_len": 512}, r"bench\.seq_len=512 .*max_len=256"),
  "negative_seed": ("pretrain", {"seed": -1}, r"seed=-1 is out of range"),
  "mesh_zero": ("pretrain", {"mesh.fsdp": 0}, r"mesh\.fsdp=0"),
  "tokenizer_too_big_for_model": (
    "pretrain",
    {"tokenizer.kind": "gpt2"},
    r"tokenizer\.kind='gpt2' has 50257 ids but model\.vocab_size=2048",
  ),
  "unknown_tokenizer": ("pretrain", {"tokenizer.kind": "wordpiece"}, r"tokenizer\.kind='wordpiece' is not valid"),
  "model_error_reported": ("pretrain", {"model.n_heads": 5}, r"model\.d_model=\d+ must be divisible by n_heads=5"),
}


def apply(config, overrides: dict) -> None:
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for part in path:
      node = node[part]
    with node.unlocked() if hasattr(node, "unlocked") else _nothing():
      node[leaf] = value


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def test_tokenizer_size_is_not_checked_where_the_config_tokenizer_is_unused():
  bench = load("bench", "modern-tiny")
  apply(bench, {"model.vocab_size": 64})  # synthetic batches: no tokenizer is built
  check_config(bench)
  apply(bench, {"bench.synthetic": False})
  with pytest.raises(ConfigError, match=r"tokenizer\.kind='sentencepiece' has 2048 ids but model\.vocab_size=64"):
    check_config(bench)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_setting_is_refused_with_key_and_range(case):
  name, overrides, pattern = BAD[case]
  file, _, arg = name.partition(":")
  config = load(file, arg or None)
  apply(config, overrides)
  with pytest.raises(ConfigError, match=r"invalid setting\(s\) for task") as e:
    check_config(config)
  assert re.search(pattern, str(e.value)), str(e.value)


def test_every_problem_is_listed_at_once():
  config = load("pretrain")
  apply(config, {"train.steps": 0, "train.lr": -1.0, "sample.top_p": 0.0})
  with pytest.raises(ConfigError, match=r"3 invalid setting\(s\)") as e:
    check_config(config)
  assert all(k in str(e.value) for k in ("train.steps", "train.lr", "sample.top_p"))


@pytest.mark.parametrize(
  "key,where",
  [
    ("train.foo", "valid keys of train: \\['accum_steps', "),
    ("trian.steps", "valid keys of the config: \\['data', "),
    ("sample.prompt.x", "sample.prompt has no sub-keys"),
  ],
)
def test_unknown_override_key_lists_the_valid_keys(key, where):
  with pytest.raises(ConfigError, match=rf"--config\.{re.escape(key)}: unknown key .*{where}"):
    check_override_keys(["--config=configs/pretrain.py", f"--config.{key}=1"])


def test_known_override_keys_pass():
  check_override_keys(["--config=configs/pretrain.py", "--config.train.steps=3", "--config.model.d_model=64"])


@pytest.mark.slow
def test_main_refuses_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "modernlm_jax.main",
      "--config=configs/pretrain.py",
      f"--workdir={workdir}",
      "--config.train.lr=-1",
      "--config.train.bogus=2",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "--config.train.bogus: unknown key 'bogus'; valid keys of train" in proc.stderr, proc.stderr[-2000:]
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "modernlm_jax.main",
      "--config=configs/pretrain.py",
      f"--workdir={workdir}",
      "--config.train.lr=-1",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0 and "train.lr=-1.0 is out of range" in proc.stderr, proc.stderr[-2000:]
  assert not workdir.exists()  # no tokenizer trained, nothing written

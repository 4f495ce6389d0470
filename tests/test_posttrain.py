"""SFT/DPO batches (packing, order, resume, held-out split), the SFT mask, init_from checks, the 3-stage chain."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from modernlm_jax.data import formats
from modernlm_jax.data import posttrain_pipeline as ptp
from modernlm_jax.data.tokenizers import ByteTokenizer
from modernlm_jax.model import ModelConfig, init_params
from modernlm_jax.train.dpo import DPOObjective
from modernlm_jax.train.init_from import InitFromError, load_params
from modernlm_jax.train.objectives import NextTokenObjective
from modernlm_jax.train.optim import learning_rate_schedule, make_optimizer
from modernlm_jax.train.registry import make_objective
from modernlm_jax.train.step import create_state, make_train_step

TOK = ByteTokenizer()
REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(vocab_size=264, max_len=64, n_layers=1, d_model=32, n_heads=2, d_ff=64)


def words(rng, n, k=5):
  letters = np.array(list("abcdefghij"))
  return " ".join("".join(rng.choice(letters, size=k)) for _ in range(n))


def write_alpaca(path: Path, n: int, seed: int = 0) -> Path:
  rng = np.random.default_rng(seed)
  records = [
    {
      "instruction": f"Echo {i}: {words(rng, 1)}",
      "input": words(rng, 1) if i % 2 else "",
      "output": words(rng, int(rng.integers(1, 4))),
    }
    for i in range(n)
  ]
  path.write_text(json.dumps(records))
  return path


def write_prompt_response(path: Path, n: int, seed: int = 0) -> Path:
  rng = np.random.default_rng(seed)
  lines = [
    json.dumps({"prompt": f"Q{i}: {words(rng, 1)}\nA:", "response": " " + words(rng, int(rng.integers(1, 6)))})
    for i in range(n)
  ]
  path.write_text("\n".join(lines) + "\n")
  return path


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(n):
    turns = f"\n\nHuman: q{i} {words(rng, 1)}\n\nAssistant:"
    lines.append(json.dumps({"chosen": f"{turns} {words(rng, 2)}", "rejected": f"{turns} {words(rng, 1, 3)}"}))
  path.write_text("\n".join(lines) + "\n")
  return path


def data_cfg(kind: str, source: Path, seq_len: int = 48, **kw):
  cfg = ptp.default_posttrain_data_config(kind)
  cfg.update({"source": f"jsonl:{source}", "seq_len": seq_len, "val_min_records": 4, **kw})
  return cfg


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
  path = write_prompt_response(tmp_path_factory.mktemp("sft") / "sft.jsonl", 80)
  return ptp.load_posttrain_data(data_cfg("sft", path, seq_len=64), TOK, "sft")


@pytest.fixture(scope="module")
def dpo_data(tmp_path_factory):
  path = write_pairs(tmp_path_factory.mktemp("dpo") / "pairs.jsonl", 40)
  return ptp.load_posttrain_data(data_cfg("dpo", path, seq_len=48), TOK, "dpo")


# ----------------------------------------------------------------------------- batches


def segments_of(batch, r):
  seg = batch["segment_ids"][r]
  return [np.flatnonzero(seg == s) for s in range(1, seg.max() + 1)]


@pytest.mark.parametrize("pack", [True, False])
def test_sft_rows_hold_each_training_example_once_per_epoch(sft_data, pack):
  it = ptp.make_posttrain_iterator(sft_data, seed=3, global_batch_size=4, pack=pack)
  rows_per_epoch = it._epochs.rows_in_epoch(0)
  if pack:
    assert rows_per_epoch < len(sft_data.train)  # several examples share a row
  else:
    assert rows_per_epoch == len(sft_data.train)
  seen = []
  for step in range(-(-rows_per_epoch // 4)):
    b = it.batch_at(step)
    assert set(b) == set(ptp._KEYS) and all(v.shape == (4, 64) for v in b.values())
    for r in range(4 if (step + 1) * 4 <= rows_per_epoch else rows_per_epoch - step * 4):
      for pos in segments_of(b, r):
        assert np.all(np.diff(pos) == 1), "a segment is contiguous"
        np.testing.assert_array_equal(b["positions"][r, pos], np.arange(len(pos)))
        assert b["inputs"][r, pos[0]] == TOK.eos_id  # EOS opens every example as BOS
        np.testing.assert_array_equal(b["inputs"][r, pos[1:]], b["targets"][r, pos[:-1]])
        seen.append((tuple(b["targets"][r, pos]), tuple(b["loss_mask"][r, pos])))
      pad = b["segment_ids"][r] == 0
      assert not b["loss_mask"][r, pad].any() and not b["inputs"][r, pad].any()
  expected = sorted((tuple(e.ids), tuple(e.mask.astype(np.float32))) for e in sft_data.train)
  assert sorted(seen) == expected


def test_order_is_seeded_and_reshuffled_every_epoch(sft_data):
  a = ptp.make_posttrain_iterator(sft_data, seed=1, global_batch_size=4)
  b = ptp.make_posttrain_iterator(sft_data, seed=1, global_batch_size=4)
  c = ptp.make_posttrain_iterator(sft_data, seed=2, global_batch_size=4)
  for _ in range(3):
    x, y, z = next(a), next(b), next(c)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(x["targets"], z["targets"])
  epochs = a._epochs
  assert epochs.groups(0) != epochs.groups(1)
  n0 = epochs.rows_in_epoch(0)
  assert epochs.rows([n0]) == [epochs.groups(1)[0]]  # global rows run on into the next epoch


def test_state_restores_the_exact_position_and_rejects_other_data(sft_data):
  it = ptp.make_posttrain_iterator(sft_data, seed=0, global_batch_size=4)
  for _ in range(30):  # past the first epoch
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = next(it)
  fresh = ptp.make_posttrain_iterator(sft_data, seed=0, global_batch_size=4)
  fresh.set_state(state)
  for k, v in next(fresh).items():
    np.testing.assert_array_equal(v, expected[k])
  other = ptp.make_posttrain_iterator(sft_data, seed=0, global_batch_size=8)
  with pytest.raises(ValueError, match="global_batch_size"):
    other.set_state(state)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_process_shards_concatenate_to_the_single_process_batch(sft_data, dpo_data, kind):
  data = sft_data if kind == "sft" else dpo_data
  whole = ptp.make_posttrain_iterator(data, seed=0, global_batch_size=4).batch_at(5)
  parts = [
    ptp.make_posttrain_iterator(data, seed=0, global_batch_size=4, process_index=p, process_count=2).batch_at(5)
    for p in range(2)
  ]
  for k, v in whole.items():
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), v)


def test_held_out_split_is_stable_disjoint_and_seed_independent(tmp_path):
  path = write_alpaca(tmp_path / "a.json", 200)
  cfg = data_cfg("sft", path, seq_len=64, val_min_records=4)
  a = ptp.load_posttrain_data(cfg, TOK, "sft")
  b = ptp.load_posttrain_data(cfg, TOK, "sft")
  assert len(a.val) == 10 and len(a.train) == 190  # 5 % of 200
  key = lambda e: tuple(e.ids)
  assert [key(e) for e in a.val] == [key(e) for e in b.val]
  assert not {key(e) for e in a.val} & {key(e) for e in a.train}
  cfg.val_min_records = 30
  c = ptp.load_posttrain_data(cfg, TOK, "sft")
  assert len(c.val) == 30 and {key(e) for e in a.val} <= {key(e) for e in c.val}


def test_dpo_rows_share_the_prompt_and_mask_only_responses(dpo_data):
  b = ptp.make_posttrain_iterator(dpo_data, seed=0, global_batch_size=4).batch_at(0)
  assert len(b) == 10 and all(v.shape == (4, 48) for v in b.values())
  for r in range(4):
    cm, rm = b["chosen_loss_mask"][r] > 0, b["rejected_loss_mask"][r] > 0
    p = int(np.argmax(cm))
    assert p == int(np.argmax(rm)) and p > 0
    np.testing.assert_array_equal(b["chosen_inputs"][r, : p + 1], b["rejected_inputs"][r, : p + 1])
    prompt = bytes(b["chosen_targets"][r, :p].tolist()).decode()
    assert prompt.startswith("\n\nHuman: q") and prompt.endswith("\n\nAssistant:")
    for side, m in (("chosen", cm), ("rejected", rm)):
      assert b[f"{side}_targets"][r, m][-1] == TOK.eos_id
      real = np.arange(48) <= np.flatnonzero(m)[-1]  # prompt + response, then padding
      np.testing.assert_array_equal(b[f"{side}_segment_ids"][r], real.astype(np.int32))
      assert np.all(m[real] == (np.arange(48) >= p)[real])


def test_eval_batches_pad_with_rows_that_weigh_nothing(dpo_data, sft_data):
  evals = ptp.make_posttrain_eval_batches(dpo_data, batch_size=3)
  n_val = len(dpo_data.val)
  assert len(evals) == -(-n_val // 3)
  model_cfg = ModelConfig.from_dict(TINY_MODEL)
  total = sum(float(DPOObjective(model_cfg).weight(b)) for b in evals)
  assert total == n_val
  sft_evals = ptp.make_posttrain_eval_batches(sft_data, batch_size=4, pack=False)
  assert sum(float(b["loss_mask"].sum()) for b in sft_evals) == sum(int(e.mask.sum()) for e in sft_data.val)


@pytest.mark.shared_data
def test_tokenized_examples_are_cached_and_rebuilt_when_the_file_changes(
  tmp_path, token_cache_dir, monkeypatch, caplog
):
  path = write_pairs(tmp_path / "pairs.jsonl", 20)
  cfg = data_cfg("dpo", path)
  first = ptp.load_posttrain_data(cfg, TOK, "dpo")
  entries = list((token_cache_dir / "posttrain").glob("dpo-*.pkl"))
  assert len(entries) == 1

  def must_not_tokenize(*args):
    raise AssertionError("a cache hit must not read or tokenize the source")

  monkeypatch.setattr(ptp, "_read_and_tokenize", must_not_tokenize)
  again = ptp.load_posttrain_data(cfg, TOK, "dpo")
  assert again.data_id == first.data_id and again.stats == first.stats
  assert all(np.array_equal(a.chosen, b.chosen) for a, b in zip(again.train, first.train))
  monkeypatch.undo()
  monkeypatch.setenv("MODERNLM_CACHE", str(token_cache_dir))

  write_pairs(path, 24, seed=1)  # edited file: a new key, tokenized again
  changed = ptp.load_posttrain_data(cfg, TOK, "dpo")
  assert changed.data_id != first.data_id and len(list((token_cache_dir / "posttrain").glob("dpo-*.pkl"))) == 2

  newest = max((token_cache_dir / "posttrain").glob("dpo-*.pkl"), key=lambda p: p.stat().st_mtime_ns)
  newest.write_bytes(b"not a pickle")  # a damaged entry is rebuilt with a warning, never trusted
  rebuilt = ptp.load_posttrain_data(cfg, TOK, "dpo")
  assert rebuilt.data_id == changed.data_id and "unreadable" in caplog.text


def test_shared_alpaca_and_hh_rlhf_subsets_load(shared_data_dir):
  sft = ptp.load_posttrain_data(
    data_cfg("sft", shared_data_dir / "alpaca" / "alpaca_5000.json", seq_len=256, val_min_records=64), TOK, "sft"
  )
  assert sft.stats["records"] == 5000 and sft.stats["skipped_empty"] == 2  # two empty Alpaca outputs
  assert len(sft.val) == 250 and len(sft.train) == 4748
  dpo = ptp.load_posttrain_data(
    data_cfg("dpo", shared_data_dir / "hh_rlhf" / "helpful-base" / "test.jsonl.gz", seq_len=256, val_min_records=64),
    TOK,
    "dpo",
  )
  assert dpo.stats["records"] == 2354
  assert dpo.stats["kept"] + dpo.stats["skipped_identical"] + dpo.stats["skipped_empty"] == 2354
  assert dpo.stats["truncated_prompt"] > 0  # HH dialogues are long: prompts are cut from the left


# ----------------------------------------------------------------------------- the SFT objective


@pytest.mark.slow
def test_sft_loss_ignores_prompt_targets_and_sees_response_targets(sft_data):
  model_cfg = ModelConfig.from_dict(TINY_MODEL)
  params = init_params(model_cfg, 0)
  batch = ptp.make_posttrain_iterator(sft_data, seed=0, global_batch_size=4).batch_at(0)
  loss = jax.jit(lambda b: NextTokenObjective(model_cfg).loss_sums(params, b, None)[0])
  base = float(loss(batch))
  prompt = (batch["loss_mask"] == 0) & (batch["segment_ids"] > 0)
  response = batch["loss_mask"] > 0
  assert prompt.any() and response.any()
  changed_prompt = {**batch, "targets": np.where(prompt, (batch["targets"] + 7) % 256, batch["targets"])}
  changed_response = {**batch, "targets": np.where(response, (batch["targets"] + 7) % 256, batch["targets"])}
  assert float(loss(changed_prompt)) == base
  assert abs(float(loss(changed_response)) - base) > 1e-3


@pytest.mark.slow
def test_sft_overfits_64_examples_response_loss_falls_80_percent():
  # Each response repeats its prompt's random word: 64 examples a tiny model fits in a few dozen steps.
  rng = np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnop"))
  examples = []
  for i in range(64):
    word = "".join(rng.choice(letters, size=6))
    examples.append(formats.SFTExample(((f"Q{word}:", False), (word, True)), f"gen:{i}"))
  encoded = formats.encode_sft(examples, TOK, 40, formats.Truncation())
  batch = ptp.batch_from_examples(encoded, "sft", 40, TOK.eos_id)
  assert batch["loss_mask"].sum() == 64 * 7  # 6 letters + EOS per example
  from tests.train_utils import tiny_config

  cfg = tiny_config("modern", batch_size=64, lr=1e-2, warmup_steps=5, steps=40, weight_decay=0.0, schedule="constant")
  cfg.objective = "sft"
  cfg.model.update(dict(vocab_size=264, max_len=48, d_model=64, n_heads=4, d_ff=128))
  model_cfg = ModelConfig.from_dict(cfg.model)
  opt = make_optimizer(cfg.train, jax.eval_shape(lambda: init_params(model_cfg, 0)))
  step = jax.jit(make_train_step(make_objective(cfg), opt, learning_rate_schedule(cfg.train)))
  state = create_state(model_cfg, opt, 0)
  losses = []
  for _ in range(int(cfg.train.steps)):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[0] > math.log(64)  # starts near uniform over the byte vocabulary
  assert losses[-1] <= 0.2 * losses[0], (losses[0], losses[-1])


# ----------------------------------------------------------------------------- stages


def load_config(name: str, preset: str | None = None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def shrink(c, steps: int = 2):
  """A byte-tokenizer, one-layer version of a stage config that runs in seconds."""
  c.model.update(TINY_MODEL)
  c.train.update(
    dict(
      steps=steps,
      batch_size=4,
      warmup_steps=1,
      log_every=1,
      eval_every=steps,
      eval_batches=1,
      checkpoint_every=steps,
      tensorboard=False,
      async_checkpoint=False,
    )
  )
  c.data.seq_len = 48
  c.mesh.data = 1
  c.sample.max_new_tokens = 0  # compiling generation would double the test's time; the CLI run covers it
  return c


def pretrain(root: Path) -> Path:
  """A two-step byte-level pretraining run (the pretraining task's stage and loop, minus its sample)."""
  from modernlm_jax.jobs.pretrain import pretrain_stage
  from modernlm_jax.train.loop import train

  rng = np.random.default_rng(0)
  (root / "corpus.txt").write_text("\n\n".join(words(rng, 30) for _ in range(40)))
  c = shrink(load_config("pretrain"))
  c.tokenizer.kind = "bytes"
  c.data.source = f"text:{root / 'corpus.txt'}"
  c.data.cache_dir = str(root / "cache")
  c.data.val_tokens = 256
  train(c, root / "pretrain", pretrain_stage(c, root / "pretrain"))
  return root / "pretrain"


def sft_config(root: Path, init_from):
  c = shrink(load_config("sft"))
  c.init_from = str(init_from)
  c.data.source = f"jsonl:{write_alpaca(root / 'alpaca.json', 40)}"
  c.data.val_min_records = 4
  return c


def exported_params(path: Path, model: dict) -> Path:
  """An init_from directory of exported weights (params.msgpack + model_config.json)."""
  import flax.serialization

  path.mkdir(parents=True)
  # The model check comes before any array is looked at, so a stand-in tree will do.
  (path / "params.msgpack").write_bytes(flax.serialization.msgpack_serialize({"embed": np.zeros((2, 2))}))
  (path / "model_config.json").write_text(json.dumps(model))
  return path


def test_init_from_errors(tmp_path):
  from modernlm_jax.jobs import posttrain

  c = sft_config(tmp_path, tmp_path / "nope")
  with pytest.raises(InitFromError, match="does not exist"):
    posttrain.run(c, tmp_path / "sft")
  other = {**c.model.to_dict(), "d_model": 64, "d_ff": 128}
  c = sft_config(tmp_path, exported_params(tmp_path / "other", other))
  with pytest.raises(InitFromError, match="different model.*d_model"):
    posttrain.run(c, tmp_path / "sft")
  c = sft_config(tmp_path, "")
  with pytest.raises(InitFromError, match="--config.init_from"):
    posttrain.run(c, tmp_path / "sft")


def test_tokenizer_must_be_the_init_from_runs(tmp_path):
  from modernlm_jax.jobs.posttrain import init_from_tokenizer

  c = sft_config(tmp_path, tmp_path)
  with pytest.raises(InitFromError, match="was trained with tokenizer 'bytes-v0'"):
    init_from_tokenizer(c, tmp_path / "sft", {"tokenizer_kind": "bytes", "tokenizer_identity": "bytes-v0"})
  c = sft_config(tmp_path, tmp_path)
  with pytest.raises(InitFromError, match="--config.tokenizer.path"):
    init_from_tokenizer(c, tmp_path / "sft", {"tokenizer_kind": "sentencepiece", "tokenizer_identity": "sp-x"})


def _restore_state(run: Path) -> dict:
  mngr = ocp.CheckpointManager(
    (run / "checkpoints").absolute(),
    item_names=("state", "data", "meta"),
    options=ocp.CheckpointManagerOptions(read_only=True),
  )
  return mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


@pytest.mark.slow
def test_pretrain_sft_dpo_chain_and_each_checkpoint_evaluates(tmp_path):
  from modernlm_jax.jobs import posttrain

  root = tmp_path
  pretrain(root)
  sft = posttrain.run(sft_config(root, root / "pretrain"), root / "sft")
  d = shrink(load_config("dpo"))
  d.init_from = str(root / "sft")
  d.data.source = f"jsonl:{write_pairs(root / 'pairs.jsonl', 30)}"
  d.data.val_min_records = 4
  dpo = posttrain.run(d, root / "dpo")
  for final in (sft, dpo):
    assert math.isfinite(final["loss"]) and math.isfinite(final["val_loss"])
  assert {
    "val_reward_accuracy",
    "val_reward_margin",
    "val_chosen_reward",
    "val_rejected_reward",
    "val_logratio",
  } <= set(dpo)
  stats = json.loads((root / "dpo" / "data_stats.json").read_text())
  assert stats["train_examples"] + stats["val_examples"] == 30
  # Every stage's checkpoint loads and evaluates; SFT moved the weights, DPO's reference is the SFT model.
  model_cfg = ModelConfig.from_dict(d.model)
  sft_data = ptp.load_posttrain_data(sft_config(root, "").data, TOK, "sft")
  batch = ptp.make_posttrain_eval_batches(sft_data, batch_size=4)[0]
  response_loss = jax.jit(lambda p: NextTokenObjective(model_cfg).loss_sums(p, batch, None)[0])
  losses = {}
  for stage in ("pretrain", "sft", "dpo"):
    params, meta = load_params(str(root / stage))
    assert meta["tokenizer_identity"] == TOK.identity
    losses[stage] = float(response_loss(params)) / float(batch["loss_mask"].sum())
    assert math.isfinite(losses[stage])
  assert losses["sft"] != losses["pretrain"]
  dpo_state, sft_state = _restore_state(root / "dpo"), _restore_state(root / "sft")
  jax.tree_util.tree_map(np.testing.assert_array_equal, dpo_state["ref_params"], sft_state["params"])
  # A finished stage resumes from its own directory: neither init_from nor its tokenizer is needed again.
  shutil.rmtree(root / "pretrain")
  again = posttrain.run(sft_config(root, root / "pretrain"), root / "sft")
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(again["params"]), sft_state["params"])

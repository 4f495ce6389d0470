"""Tokenizers: GPT-2 ids, round trips, SentencePiece train/reload, identities, vocab checks."""

from __future__ import annotations

import json
import shutil

import hypothesis
import hypothesis.strategies as st
import ml_collections
import pytest

from modernlm_jax.data import tokenizers
from modernlm_jax.data.tokenizers import (
  ByteTokenizer,
  GPT2Tokenizer,
  SentencePieceTokenizer,
  build_tokenizer,
  check_vocab_fits,
  default_tokenizer_config,
)

# Ids published by OpenAI's GPT-2 encoder (identical in HF's GPT2TokenizerFast).
GPT2_KNOWN = [
  ("Hello world", [15496, 995]),
  (" Hello world", [18435, 995]),
  ("The quick brown fox jumps over the lazy dog.", [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]),
  # The literal marker in text is ordinary text, never the EOS id.
  ("<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]),
]

_WORDS = (
  "the a cat dog sat on mat and ran far away while birds sang over green hills under blue sky "
  "every morning children walked to school talking about games stories and dreams"
).split()


def _corpus(n_docs: int = 300) -> list[str]:
  docs = []
  for d in range(n_docs):
    words = [_WORDS[(d * 7 + i * 13 + (i * i) % 5) % len(_WORDS)] for i in range(40 + d % 17)]
    docs.append(" ".join(words[:20]).capitalize() + ".\n" + " ".join(words[20:]) + f" {d}.")
  return docs


def _sp_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = default_tokenizer_config()
  cfg.kind = "sentencepiece"
  cfg.vocab_size = 320
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
  return GPT2Tokenizer()


@pytest.mark.parametrize("text,ids", GPT2_KNOWN)
def test_gpt2_reproduces_known_ids(gpt2, text, ids):
  assert gpt2.encode(text) == ids
  assert gpt2.decode(ids) == text


def test_gpt2_vocab_and_batch(gpt2):
  assert (gpt2.vocab_size, gpt2.eos_id) == (50257, 50256)
  assert gpt2.identity.startswith("gpt2-bpe-50257-")
  texts = [t for t, _ in GPT2_KNOWN] + ["", "naïve café 日本語 🙂\n\n  tabs\tand  spaces"]
  assert gpt2.encode_batch(texts) == [gpt2.encode(t) for t in texts]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.text(max_size=200))
def test_gpt2_and_bytes_round_trip(text):
  gpt2 = GPT2Tokenizer()
  assert gpt2.decode(gpt2.encode(text)) == text
  byte_tok = ByteTokenizer()
  assert byte_tok.decode(byte_tok.encode(text)) == text


def test_gpt2_from_user_folder_identity_tracks_content(tmp_path, gpt2):
  src = tokenizers.default_gpt2_vocab_dir()
  same = tmp_path / "same"
  shutil.copytree(src, same)
  assert GPT2Tokenizer(same).identity == gpt2.identity
  # Same vocabulary, different bytes on disk: ids stay, identity changes (it hashes the files).
  reformatted = tmp_path / "reformatted"
  shutil.copytree(src, reformatted)
  encoder = json.loads((reformatted / "encoder.json").read_text(encoding="utf-8"))
  (reformatted / "encoder.json").write_text(json.dumps(encoder, indent=1), encoding="utf-8")
  tok = build_tokenizer(ml_collections.ConfigDict({"kind": "gpt2", "path": str(reformatted)}))
  assert tok.identity != gpt2.identity
  assert tok.encode("Hello world") == [15496, 995]


def test_gpt2_bad_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.path"):
    GPT2Tokenizer(tmp_path)
  broken = tmp_path / "broken"
  shutil.copytree(tokenizers.default_gpt2_vocab_dir(), broken)
  lines = (broken / "vocab.bpe").read_text(encoding="utf-8").split("\n")
  lines[1], lines[2] = lines[2], lines[1]  # merge order no longer matches encoder.json ranks
  (broken / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
  with pytest.raises(ValueError, match="disagree"):
    GPT2Tokenizer(broken)


def test_byte_tokenizer():
  tok = build_tokenizer(ml_collections.ConfigDict({"kind": "bytes", "path": ""}))
  assert (tok.vocab_size, tok.eos_id, tok.identity) == (257, 256, "bytes-v1")
  assert tok.encode("hé") == [104, 195, 169]
  assert tok.encode_batch(["a", "bc"]) == [[97], [98, 99]]
  assert tok.decode([104, 105, 256]) == "hi"  # EOS is dropped on decode


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_train_and_reload(tmp_path, model_type):
  cfg = _sp_cfg(model_type=model_type)
  calls = []

  def texts():
    calls.append(1)
    return _corpus()

  tok = build_tokenizer(cfg, str(tmp_path), texts)
  assert (tmp_path / "tokenizer" / tokenizers.SP_MODEL_FILE).is_file()
  assert tok.vocab_size <= 320 and tok.eos_id == 1
  assert tok.identity.startswith(f"sentencepiece-{tok.vocab_size}-")
  sample = "The cat sat.\nBirds sang over 42 green hills — naïve 🙂\ttab  two spaces"
  ids = tok.encode(sample)
  assert tok.decode(ids) == sample  # lossless: identity normalisation + byte fallback
  assert tok.encode_batch([sample, "dog"]) == [ids, tok.encode("dog")]
  # A resumed run reloads the trained model instead of retraining.
  again = build_tokenizer(cfg, str(tmp_path), None)
  assert len(calls) == 1
  assert again.identity == tok.identity and again.encode(sample) == ids
  # Loading the .model file directly gives the same tokenizer.
  direct = build_tokenizer(_sp_cfg(path=str(tmp_path / "tokenizer" / tokenizers.SP_MODEL_FILE)))
  assert direct.identity == tok.identity


def test_sentencepiece_training_is_deterministic_and_identity_tracks_vocab(tmp_path):
  first = build_tokenizer(_sp_cfg(), str(tmp_path / "a"), _corpus)
  second = build_tokenizer(_sp_cfg(), str(tmp_path / "b"), _corpus)
  assert first.identity == second.identity
  bigger = build_tokenizer(_sp_cfg(vocab_size=360), str(tmp_path / "c"), _corpus)
  assert bigger.identity != first.identity


def test_sentencepiece_errors(tmp_path):
  with pytest.raises(ValueError, match="workdir"):
    build_tokenizer(_sp_cfg(), None, _corpus)
  with pytest.raises(ValueError, match="no training texts"):
    build_tokenizer(_sp_cfg(), str(tmp_path), None)
  with pytest.raises(FileNotFoundError, match="not found"):
    SentencePieceTokenizer(tmp_path / "missing.model")
  build_tokenizer(_sp_cfg(), str(tmp_path), _corpus)
  with pytest.raises(ValueError, match="delete"):
    build_tokenizer(_sp_cfg(vocab_size=400), str(tmp_path), _corpus)
  with pytest.raises(ValueError, match="model_type"):
    build_tokenizer(_sp_cfg(model_type="wordpiece"), str(tmp_path / "x"), _corpus)
  with pytest.raises(ValueError, match="no text"):
    build_tokenizer(_sp_cfg(), str(tmp_path / "empty"), lambda: ["", "  "])


def test_unknown_kind():
  with pytest.raises(ValueError, match="tokenizer.kind"):
    build_tokenizer(ml_collections.ConfigDict({"kind": "wordpiece", "path": ""}))


def test_check_vocab_fits(gpt2):
  check_vocab_fits(gpt2, 50304)
  check_vocab_fits(ByteTokenizer(), 257)
  with pytest.raises(ValueError, match="model.vocab_size >= 50257"):
    check_vocab_fits(gpt2, 32000)

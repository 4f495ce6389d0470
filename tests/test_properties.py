"""Property tests: tokenizers and the SFT/DPO formatters on random unicode, empty and very long inputs.

Round trips are asserted where the tokenizer promises them: bytes and GPT-2 BPE for any text, the
trained SentencePiece model for any text without U+2581 (its word-boundary symbol, which it decodes
as a space). Formatter properties: ids and masks have equal lengths, respect `max_tokens`, the
truncated example is a contiguous slice of the full one, the loss covers exactly the response (+EOS),
and every dropped example is counted.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from modernlm_jax.data import formats
from modernlm_jax.data.tokenizers import ByteTokenizer, GPT2Tokenizer, SentencePieceTokenizer, train_sentencepiece

SP_BOUNDARY = "\u2581"
TRICKY = [
  "<|endoftext|>",
  "</s>",
  "<unk>",
  "<s>",
  "\n",
  "\r\n",
  " ",
  "  ",
  "\t",
  "\x00",
  "é",
  "e\u0301",
  "😀",
  "\ufeff",
  "\u200b",
  "ﬁ",
  "\U0010ffff",
  "\n\nHuman:",
  "\n\nAssistant:",
  "### Response:\n",
]
texts = st.lists(st.one_of(st.text(max_size=24), st.sampled_from(TRICKY)), max_size=10).map("".join)
responses = texts.filter(lambda s: s.strip() != "")
long_texts = st.tuples(texts, st.integers(1000, 6000)).map(lambda t: ((t[0] or "x") * t[1])[: t[1]])
blank = st.text(alphabet=" \t\n\r\x0b\x0c\u3000\u2003\u00a0", max_size=6)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
  words = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
    "every jumbo box of pizza and 1234 numbers"
  ).split()
  rng = np.random.default_rng(0)
  corpus = [" ".join(rng.choice(words, size=12)) + "\n" + "é😀 ok" for _ in range(200)]
  model = train_sentencepiece(corpus, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=320)
  return {"bytes": ByteTokenizer(), "gpt2": GPT2Tokenizer(), "sentencepiece": SentencePieceTokenizer(model)}


def lossless(name: str, text: str) -> bool:
  return name != "sentencepiece" or SP_BOUNDARY not in text


TOKENIZERS = ["bytes", "gpt2", "sentencepiece"]


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("name", TOKENIZERS)
@PROPS
@given(text=st.one_of(texts, long_texts))
def test_tokenizer_round_trip_ids_in_range_and_never_eos(tokenizers, name, text):
  tok = tokenizers[name]
  ids = tok.encode(text)
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert tok.eos_id not in ids  # "<|endoftext|>" / "</s>" inside a text are ordinary text
  assert tok.encode_batch([text, ""]) == [ids, tok.encode("")]
  if lossless(name, text):
    assert tok.decode(ids) == text
  if text == "":
    assert ids == []


def test_sentencepiece_boundary_symbol_is_the_documented_exception(tokenizers):
  tok = tokenizers["sentencepiece"]
  assert tok.decode(tok.encode("a b")) == "a b"
  assert tok.decode(tok.encode(f"a{SP_BOUNDARY}b")) in (f"a{SP_BOUNDARY}b", "a b")


# ----------------------------------------------------------------------------- SFT formatter


def sft(prompt: str, response: str) -> formats.SFTExample:
  return formats.to_sft_example({"prompt": prompt, "response": response}, "prompt_response", "rows.jsonl:1")


def encode_one_sft(tok, example, max_tokens, truncation=formats.Truncation()):
  stats = formats.FormatStats()
  out = formats.encode_sft([example], tok, max_tokens, truncation, stats)
  assert len(out) + stats.skipped_too_long == 1 and stats.kept == len(out)
  return (out[0] if out else None), stats


@pytest.mark.parametrize("name", TOKENIZERS)
@PROPS
@given(prompt=texts, response=responses)
def test_sft_untruncated_mask_covers_exactly_the_response_and_eos(tokenizers, name, prompt, response):
  tok = tokenizers[name]
  enc, stats = encode_one_sft(tok, sft(prompt, response), 10**6)
  ids, mask = enc.ids, enc.mask
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
  assert ids[-1] == tok.eos_id and mask[-1] and stats.truncated_prompt == stats.truncated_response == 0
  first = int(np.argmax(mask))
  assert mask[first:].all() and not mask[:first].any()  # prompt, then response: one switch
  # The untrained part is where the prompt's own encoding agrees (a token across the seam counts as response).
  prompt_ids = tok.encode(prompt)
  assert first <= len(prompt_ids) and list(ids[:first]) == prompt_ids[:first]
  if lossless(name, prompt + response):
    assert tok.decode(ids[:-1]) == prompt + response
  if name == "bytes":
    assert first == len(prompt.encode()) and mask.sum() == len(response.encode()) + 1
  if prompt == "":
    assert mask.all()


@pytest.mark.parametrize("name", TOKENIZERS)
@PROPS
@given(
  prompt=st.one_of(texts, long_texts),
  response=st.one_of(responses, long_texts.filter(str.strip)),
  max_tokens=st.integers(2, 96),
  mode=st.sampled_from(formats.TRUNCATION_MODES),
  min_prompt=st.integers(0, 40),
)
def test_sft_truncation_keeps_a_counted_contiguous_slice(
  tokenizers, name, prompt, response, max_tokens, mode, min_prompt
):
  tok = tokenizers[name]
  example = sft(prompt, response)
  full, _ = encode_one_sft(tok, example, 10**7)
  enc, stats = encode_one_sft(tok, example, max_tokens, formats.Truncation(mode, min_prompt))
  n = len(full.ids)
  if n <= max_tokens:
    np.testing.assert_array_equal(enc.ids, full.ids)
    np.testing.assert_array_equal(enc.mask, full.mask)
    return
  if mode == "skip":
    assert enc is None and stats.skipped_too_long == 1
    return
  assert stats.truncated_prompt + stats.truncated_response + stats.skipped_too_long >= 1
  if enc is None:  # nothing trainable was left
    assert stats.skipped_too_long == 1
    return
  assert len(enc.ids) <= max_tokens and enc.mask.any()
  m = len(enc.ids)
  starts = [
    s
    for s in np.flatnonzero(full.ids[: n - m + 1] == enc.ids[0])
    if np.array_equal(full.ids[s : s + m], enc.ids) and np.array_equal(full.mask[s : s + m], enc.mask)
  ]
  assert starts, "the truncated example is not a slice of the full one"
  if mode == "right":
    assert starts[0] == 0
  response_len = int(full.mask.sum())
  if mode == "prompt_left" and response_len + min(min_prompt, max_tokens - 1) <= max_tokens:
    np.testing.assert_array_equal(enc.ids[-response_len:], full.ids[-response_len:])  # the response survives


@PROPS
@given(turns=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), texts), max_size=6), last=responses)
def test_chat_mask_covers_exactly_the_assistant_turns(tokenizers, turns, last):
  messages = [{"role": r, "content": c} for r, c in turns] + [{"role": "assistant", "content": last}]
  if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
    with pytest.raises(formats.EmptyResponse):
      formats.to_sft_example({"messages": messages}, "chat", "chat.jsonl:1")
    return
  example = formats.to_sft_example({"messages": messages}, "chat", "chat.jsonl:1")
  tok = tokenizers["bytes"]  # one byte per token: the mask can be compared with the text exactly
  enc, _ = encode_one_sft(tok, example, 10**6)
  trained = bytes(int(i) for i in enc.ids[enc.mask][:-1])
  assert trained == "".join(m["content"] for m in messages if m["role"] == "assistant").encode()
  assert enc.ids[-1] == tok.eos_id and enc.mask[-1]


@given(prompt=texts, response=blank)
@PROPS
def test_empty_response_is_skipped_never_an_error(prompt, response):
  with pytest.raises(formats.EmptyResponse):
    sft(prompt, response)
  with pytest.raises(formats.EmptyResponse):
    formats.to_sft_example({"instruction": prompt, "output": response}, "alpaca", "a.json:1")


# ----------------------------------------------------------------------------- DPO formatter


def encode_one_pair(tok, prompt, chosen, rejected, max_tokens, truncation=formats.Truncation()):
  stats = formats.FormatStats()
  example = formats.to_preference_example(
    {"prompt": prompt, "chosen": chosen, "rejected": rejected}, "prompt_chosen_rejected", "p.jsonl:1"
  )
  out = formats.encode_preferences([example], tok, max_tokens, truncation, stats)
  assert len(out) + stats.skipped_too_long + stats.skipped_identical == 1 and stats.kept == len(out)
  return (out[0] if out else None), stats


@pytest.mark.parametrize("name", TOKENIZERS)
@PROPS
@given(prompt=texts, chosen=responses, rejected=responses)
def test_dpo_pair_shares_the_prompt_and_round_trips(tokenizers, name, prompt, chosen, rejected):
  assume(chosen != rejected)
  tok = tokenizers[name]
  pair, stats = encode_one_pair(tok, prompt, chosen, rejected, 10**6)
  if pair is None:  # the two responses tokenize identically after the shared prefix
    assert stats.skipped_identical == 1
    return
  for response, ids in ((chosen, pair.chosen), (rejected, pair.rejected)):
    assert ids.dtype == np.int32 and len(ids) >= 1 and ids[-1] == tok.eos_id
    full = np.concatenate([pair.prompt, ids[:-1]])
    np.testing.assert_array_equal(full, tok.encode(prompt + response))
    if lossless(name, prompt + response):
      assert tok.decode(full) == prompt + response
  assert not np.array_equal(pair.chosen, pair.rejected)


@pytest.mark.parametrize("name", TOKENIZERS)
@PROPS
@given(
  prompt=st.one_of(texts, long_texts),
  chosen=st.one_of(responses, long_texts.filter(str.strip)),
  rejected=responses,
  max_tokens=st.integers(2, 96),
  mode=st.sampled_from(formats.TRUNCATION_MODES),
)
def test_dpo_truncation_respects_the_budget_and_counts(tokenizers, name, prompt, chosen, rejected, max_tokens, mode):
  assume(chosen != rejected)
  tok = tokenizers[name]
  full, _ = encode_one_pair(tok, prompt, chosen, rejected, 10**7)
  pair, stats = encode_one_pair(tok, prompt, chosen, rejected, max_tokens, formats.Truncation(mode, 8))
  if full is None:
    assert pair is None
    return
  too_long = len(full.prompt) + max(len(full.chosen), len(full.rejected)) > max_tokens
  if not too_long:
    for a, b in ((pair.prompt, full.prompt), (pair.chosen, full.chosen), (pair.rejected, full.rejected)):
      np.testing.assert_array_equal(a, b)
    return
  if mode == "skip" or pair is None:
    assert pair is None and stats.skipped_too_long + stats.skipped_identical == 1
    return
  assert len(pair.prompt) + len(pair.chosen) <= max_tokens and len(pair.prompt) + len(pair.rejected) <= max_tokens
  assert len(pair.chosen) >= 1 and len(pair.rejected) >= 1
  np.testing.assert_array_equal(pair.prompt, full.prompt[len(full.prompt) - len(pair.prompt) :])  # oldest dropped
  np.testing.assert_array_equal(pair.chosen, full.chosen[: len(pair.chosen)])  # responses cut at the end
  np.testing.assert_array_equal(pair.rejected, full.rejected[: len(pair.rejected)])
  assert stats.truncated_prompt + stats.truncated_response >= 1

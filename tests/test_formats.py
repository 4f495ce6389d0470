"""Post-training record formats: templates, masks, HH-RLHF prompt splitting, truncation, bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from modernlm_jax.data import formats
from modernlm_jax.data.formats import RecordError, Truncation
from modernlm_jax.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def write_jsonl(path, records, raw_lines=()):
  lines = [json.dumps(r) for r in records] + list(raw_lines)
  path.write_text("\n".join(lines) + "\n")
  return path


def decode_masked(enc: formats.EncodedSFT) -> tuple[str, str]:
  """(prompt text, trained text) of an encoded example; EOS shown as <eos>."""
  show = lambda ids: "".join("<eos>" if i == TOK.eos_id else chr(i) for i in ids)
  return show(enc.ids[~enc.mask]), show(enc.ids[enc.mask])


class MergingTokenizer(ByteTokenizer):
  """Bytes, except that "ab" is one token (300): a merge that can cross the prompt/response seam."""

  vocab_size = 301
  identity = "bytes-ab"

  def encode(self, text):
    ids, i = [], 0
    while i < len(text):
      if text.startswith("ab", i):
        ids.append(300)
        i += 2
      else:
        ids.append(ord(text[i]))
        i += 1
    return ids

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


# ----------------------------------------------------------------------------- SFT


def test_alpaca_template_and_mask_cover_only_response_and_eos():
  with_input = formats.to_sft_example({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "alpaca", "f:1")
  no_input = formats.to_sft_example({"instruction": "Say hi.", "output": "hi"}, "alpaca", "f:2")
  assert with_input.segments[0][0] == formats.ALPACA_PROMPT_WITH_INPUT.format(instruction="Add.", input="2 and 3")
  assert "### Input:" not in no_input.segments[0][0]
  assert no_input.segments[0][0].endswith("### Instruction:\nSay hi.\n\n### Response:\n")
  enc = formats.encode_sft([with_input, no_input], TOK, 512, Truncation())
  for e, (prompt, response) in zip(enc, [(with_input.segments[0][0], "5"), (no_input.segments[0][0], "hi")]):
    assert decode_masked(e) == (prompt, response + "<eos>")
    assert e.ids[-1] == TOK.eos_id and e.ids.dtype == np.int32


def test_prompt_response_and_chat_formats():
  pr = formats.to_sft_example({"prompt": "Q: 1+1?\nA:", "response": " 2"}, "prompt_response", "f:1")
  chat = formats.to_sft_example(
    {
      "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
      ]
    },
    "chat",
    "f:2",
  )
  enc = formats.encode_sft([pr, chat], TOK, 512, Truncation())
  assert decode_masked(enc[0]) == ("Q: 1+1?\nA:", " 2<eos>")
  prompt, trained = decode_masked(enc[1])
  assert trained == "HelloBye!<eos>"  # every assistant turn is learned, nothing else
  assert prompt == "Be brief.\n\nHuman: Hi\n\nAssistant: \n\nHuman: Bye\n\nAssistant: "


def test_a_token_merged_across_the_seam_counts_as_response():
  ex = formats.SFTExample((("xa", False), ("bc", True)), "f:1")
  (enc,) = formats.encode_sft([ex], MergingTokenizer(), 16, Truncation())
  np.testing.assert_array_equal(enc.ids, [ord("x"), 300, ord("c"), TOK.eos_id])
  np.testing.assert_array_equal(enc.mask, [False, True, True, True])


def test_auto_format_detection_and_wrong_stage(tmp_path):
  alpaca = tmp_path / "a.json"
  alpaca.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}] * 3, indent=1))
  assert len(formats.load_examples(f"json:{alpaca}", "sft")) == 3
  with pytest.raises(ValueError, match=r"look like 'alpaca' data, which dpo cannot use"):
    formats.load_examples(str(alpaca), "dpo")
  with pytest.raises(ValueError, match=r"data.format='hh' does not suit sft"):
    formats.load_examples(str(alpaca), "sft", fmt="hh")


# ----------------------------------------------------------------------------- preferences


def hh(prompt_turns: str, chosen: str, rejected: str) -> dict:
  return {"chosen": prompt_turns + " " + chosen, "rejected": prompt_turns + " " + rejected}


def test_hh_prompt_runs_to_the_last_assistant_turn():
  turns = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a joke\n\nAssistant:"
  ex = formats.to_preference_example(hh(turns, "A pun.", "No."), "hh", "f:1")
  assert (ex.prompt, ex.chosen, ex.rejected) == (turns, " A pun.", " No.")
  (pair,) = formats.encode_preferences([ex], TOK, 512, Truncation())
  assert bytes(pair.prompt.tolist()).decode() == turns
  assert bytes(pair.chosen[:-1].tolist()).decode() == " A pun." and pair.chosen[-1] == TOK.eos_id
  assert bytes(pair.rejected[:-1].tolist()).decode() == " No." and pair.rejected[-1] == TOK.eos_id


def test_hh_response_quoting_assistant_falls_back_to_the_common_prompt():
  turns = "\n\nHuman: Hi\n\nAssistant:"
  record = hh(turns, "Sure.\n\nAssistant: more", "Nope.")
  stats = formats.FormatStats()
  ex = formats.to_preference_example(record, "hh", "f:1", stats)
  assert (ex.prompt, ex.chosen, ex.rejected) == (turns, " Sure.\n\nAssistant: more", " Nope.")
  assert stats.prompt_from_common_prefix == 1


def test_identical_pairs_are_skipped_and_counted(tmp_path):
  write_jsonl(
    tmp_path / "a.jsonl",
    [{"prompt": "Q?", "chosen": " yes", "rejected": " no"}, {"prompt": "Q?", "chosen": " same", "rejected": " same"}],
  )
  write_jsonl(
    tmp_path / "b.jsonl", [hh("\n\nHuman: a\n\nAssistant:", "x", "x"), hh("\n\nHuman: a\n\nAssistant:", "x", "y")]
  )
  stats = formats.FormatStats()
  examples = formats.load_examples(f"jsonl:{tmp_path}/*.jsonl", "dpo", stats=stats)
  assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [
    ("Q?", " yes", " no"),
    ("\n\nHuman: a\n\nAssistant:", " x", " y"),
  ]
  assert stats.records == 4 and stats.skipped_identical == 2


# ----------------------------------------------------------------------------- truncation


def long_sft(prompt_len=30, response_len=10):
  return formats.SFTExample((("p" * prompt_len, False), ("r" * response_len, True)), "f:1")


def test_prompt_left_truncation_keeps_the_response_and_counts():
  stats = formats.FormatStats()
  (enc,) = formats.encode_sft([long_sft()], TOK, 20, Truncation("prompt_left", min_prompt_tokens=4), stats)
  assert decode_masked(enc) == ("p" * 9, "r" * 10 + "<eos>")  # 20 = 9 prompt + 10 response + EOS
  assert stats.truncated_prompt == 1 and stats.truncated_response == 0


def test_prompt_left_keeps_min_prompt_then_cuts_the_response_end():
  stats = formats.FormatStats()
  (enc,) = formats.encode_sft([long_sft(30, 30)], TOK, 20, Truncation("prompt_left", min_prompt_tokens=4), stats)
  assert decode_masked(enc) == ("pppp", "r" * 16)
  assert stats.truncated_prompt == 1 and stats.truncated_response == 1


def test_right_and_skip_truncation():
  stats = formats.FormatStats()
  (enc,) = formats.encode_sft([long_sft(15, 10)], TOK, 20, Truncation("right"), stats)
  assert decode_masked(enc) == ("p" * 15, "rrrrr")
  out = formats.encode_sft([long_sft(15, 10), long_sft(2, 2)], TOK, 20, Truncation("skip"), stats)
  assert len(out) == 1 and stats.skipped_too_long == 1
  assert formats.encode_sft([long_sft(25, 2)], TOK, 20, Truncation("right"), stats) == []  # no response left
  assert stats.skipped_too_long == 2


def test_pair_truncation_shares_the_prompt_and_fits_the_longer_response():
  ex = formats.PreferenceExample("P" * 30, "c" * 12, "r" * 5, "f:1")
  stats = formats.FormatStats()
  (pair,) = formats.encode_preferences([ex], TOK, 20, Truncation("prompt_left", 4), stats)
  assert len(pair.prompt) == 7 and len(pair.chosen) == 13 and len(pair.rejected) == 6
  assert stats.truncated_prompt == 1
  ex2 = formats.PreferenceExample("P", "same" * 10 + "a", "same" * 10 + "b", "f:2")
  assert formats.encode_preferences([ex2], TOK, 20, Truncation("prompt_left", 4), stats) == []
  assert stats.skipped_identical == 1  # identical once cut to length: no preference left


def test_bad_truncation_mode():
  with pytest.raises(ValueError, match="prompt_left"):
    Truncation("middle")


# ----------------------------------------------------------------------------- bad input


def test_missing_field_names_file_and_line(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
  with pytest.raises(RecordError, match=rf"{path}:2: record has no field 'output'.*skip_bad_rows=True"):
    formats.load_examples(f"jsonl:{path}", "sft")


def test_missing_field_in_a_json_array_names_line_and_record(tmp_path):
  path = tmp_path / "d.json"
  path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c",\n  "input": ""}\n]\n')
  with pytest.raises(RecordError, match=rf"{path}:3 \(record 1\): record has no field 'output'"):
    formats.load_examples(str(path), "sft")


def test_bad_records_skipped_and_counted_when_configured(tmp_path):
  path = tmp_path / "d.jsonl.gz"
  lines = [
    json.dumps({"instruction": "a", "output": "b"}),
    "{not json",
    json.dumps({"instruction": "c"}),
    json.dumps({"instruction": "d", "output": 3}),
    json.dumps({"instruction": "e", "output": "  "}),
  ]
  with gzip.open(path, "wt") as f:
    f.write("\n".join(lines))
  with pytest.raises(RecordError, match=r"d.jsonl.gz:2: invalid JSON"):
    formats.load_examples(str(path), "sft")
  stats = formats.FormatStats()
  examples = formats.load_examples(str(path), "sft", skip_bad_rows=True, stats=stats)
  assert len(examples) == 1
  assert (stats.skipped_bad, stats.skipped_empty) == (3, 1)


def test_wrong_types_and_missing_files(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": ["x"]}])
  with pytest.raises(RecordError, match=r"d.jsonl:1: field 'rejected' is list, not a string"):
    formats.load_examples(str(path), "dpo")
  with pytest.raises(FileNotFoundError, match=r"--config.data.source"):
    formats.load_examples(f"jsonl:{tmp_path}/missing*.jsonl", "sft")
  no_turn = write_jsonl(tmp_path / "e.jsonl", [{"chosen": "just text", "rejected": "other text"}])
  with pytest.raises(RecordError, match=r"e.jsonl:1: an HH-RLHF transcript has no 'Assistant:' turn"):
    formats.load_examples(str(no_turn), "dpo")

"""Conversational set: DailyDialog / PersonaChat / HH-RLHF loaders on small fixtures, BLEU, perplexity."""

import gzip
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from modernlm_jax.eval import dialogue


class ByteTokenizer:
  vocab_size, eos_id, identity = 257, 256, "bytes-test"

  def encode(self, text):
    return list(text.encode("utf-8"))

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_daily_dialog_layout(tmp_path):
  p = tmp_path / "dd.jsonl"
  p.write_text(
    "\n".join(
      json.dumps(r)
      for r in [
        {"dialog": ["Hi , how are you ?", " Fine , thanks .", "Good ."], "act": [1, 2, 1], "emotion": [0, 0, 0]},
        {"dialog": ["Only one turn ."]},
      ]
    )
  )
  d = dialogue.load_daily_dialog(p)
  assert len(d) == 1 and d[0].turns == ("Hi , how are you ?", "Fine , thanks .")  # trailing user turn dropped
  prompt, reply = dialogue.prompt_and_reply(d[0])
  assert prompt == "User: Hi , how are you ?\nAssistant:" and reply == " Fine , thanks ."
  (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}))
  with pytest.raises(ValueError, match="dialog"):
    dialogue.load_daily_dialog(tmp_path / "bad.jsonl")


def test_persona_chat_layout(tmp_path):
  entry = {
    "personality": ["i like dogs .", "i am a nurse ."],
    "utterances": [
      {"history": ["hello"], "candidates": ["wrong", "hi there"]},
      {"history": ["hello", "hi there", "what do you do ?"], "candidates": ["bad", "i am a nurse ."]},
    ],
  }
  p = tmp_path / "personachat_self_original.json"
  p.write_text(json.dumps({"train": [entry], "valid": [entry, entry]}))
  d = dialogue.load_persona_chat(p, "valid")
  assert len(d) == 2
  assert d[0].turns == ("hello", "hi there", "what do you do ?", "i am a nurse .")
  prompt, reply = dialogue.prompt_and_reply(d[0])
  assert prompt.startswith("Persona: i like dogs .\nPersona: i am a nurse .\nUser: hello\nAssistant: hi there")
  assert reply == " i am a nurse ."
  with pytest.raises(ValueError, match="no split 'test'"):
    dialogue.load_persona_chat(p, "test")
  assert len(dialogue.load_dialogues(f"personachat:{p}@train")) == 1


def test_hh_chosen_side(tmp_path):
  p = tmp_path / "hh_rlhf" / "helpful-base" / "test.jsonl.gz"
  p.parent.mkdir(parents=True)
  rows = [
    {
      "chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!\n\nHuman: Bye?\n\nAssistant: Goodbye.",
      "rejected": "\n\nHuman: Hi?\n\nAssistant: No.",
    }
  ]
  with gzip.open(p, "wt") as f:
    f.write("\n".join(json.dumps(r) for r in rows))
  d = dialogue.load_dialogues("hh", data_root=tmp_path)
  assert d == [dialogue.Dialogue(("Hi?", "Hello!", "Bye?", "Goodbye."))]
  with pytest.raises(FileNotFoundError, match="data_root"):
    dialogue.load_dialogues("hh", data_root=tmp_path / "nowhere")
  with pytest.raises(ValueError, match="unknown dialogue source"):
    dialogue.load_dialogues("reddit:x")


def test_corpus_bleu_by_hand_and_against_sacrebleu():
  assert dialogue.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
  # hyp 4 tokens, ref 6: p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> smoothed 1/(2*1); bp = exp(1 - 6/4)
  got = dialogue.corpus_bleu(["the cat sat down"], ["the cat sat on the mat"])
  want = (
    100 * math.exp(1 - 6 / 4) * math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(1 / 2)) / 4)
  )
  assert got == pytest.approx(want)
  assert dialogue.corpus_bleu(["zzz"], ["the cat"]) < 1.0
  sacrebleu = pytest.importorskip("sacrebleu")
  hyps = ["the cat sat down", "a dog is running in the park", "hello there , how are you ?"]
  refs = ["the cat sat on the mat", "the dog runs in the park", "hello , how are you today ?"]
  ref = sacrebleu.corpus_bleu(hyps, [refs]).score
  assert dialogue.corpus_bleu(hyps, refs) == pytest.approx(ref, rel=1e-6)


def test_evaluate_uniform_ppl_and_bleu_of_copied_replies():
  V = 257
  dialogues = [
    dialogue.Dialogue(("Hi there.", "Hello, friend.")),
    dialogue.Dialogue(("What is two plus two?", "Four.", "And three?", "Six, almost.")),
  ]
  uniform = lambda t, p, s: jnp.zeros((*t.shape, V), jnp.float32)
  tok = ByteTokenizer()
  refs = [dialogue.prompt_and_reply(d)[1] for d in dialogues]

  def echo_reference(prompts, max_new_tokens, stop_ids):  # a "model" that says exactly the reference, then a new turn
    return [tok.encode(r + "\nUser: more") for r in refs]

  res = dialogue.evaluate(uniform, echo_reference, tok, dialogues, context=256, batch_size=2)
  np.testing.assert_allclose(res["ppl"], V, rtol=1e-5)
  np.testing.assert_allclose(res["bpb"], math.log2(V), rtol=1e-5)  # one byte per token
  assert res["reply_tokens"] == sum(len(r.encode()) for r in refs)
  assert res["bleu"] == pytest.approx(100.0) and res["dialogues"] == 2
  res2 = dialogue.evaluate(
    uniform, lambda p, n, s: [tok.encode("nothing alike")] * len(p), tok, dialogues, context=256, batch_size=2
  )
  assert res2["bleu"] < 10


@pytest.mark.shared_data
def test_shared_hh_test_split_loads():
  from modernlm_jax.data.posttrain_pipeline import shared_data_root

  if not dialogue.default_hh_paths(shared_data_root()):
    pytest.skip("shared HH-RLHF data absent")
  d = dialogue.load_dialogues("hh", limit=20, data_root=shared_data_root())
  assert len(d) == 20 and all(len(x.turns) % 2 == 0 for x in d)


def test_bleu_falls_back_to_ours_without_sacrebleu(monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu -> ImportError
  score, impl = dialogue.bleu(["the cat sat down"], ["the cat sat on the mat"])
  assert "corpus_bleu" in impl and score == pytest.approx(
    dialogue.corpus_bleu(["the cat sat down"], ["the cat sat on the mat"])
  )

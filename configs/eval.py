"""Evaluation. `--config=configs/eval.py[:quick|medium|full] --config.checkpoint=runs/x --workdir=runs/x-eval`.

`quick` (default) finishes in minutes on a CPU for a tiny model; `medium` scores 300 examples per task;
`full` adds WikiText-2 test with the
GPT-2 protocol (sequence 1024, batch 32, GPT-2 BPE) and every task example. Tasks whose data is
missing under `data_root` are skipped with the reason; they never stop the run.
`--config.eval.text=PATH` (a file or glob) adds any text for perplexity / bits per byte;
`--config.eval.split=valid` and `--config.eval.stride=N` pick the corpus split and window stride.
"""

import ml_collections

SUITES = ("quick", "medium", "full")


def get_config(arg: str | None = None):
  suite = arg or "quick"
  if suite not in SUITES:
    raise ValueError(f"configs/eval.py:{suite} is not a suite; choose one of {list(SUITES)}")
  c = ml_collections.ConfigDict()
  c.task = "eval"
  c.suite = suite
  c.checkpoint = ""  # run directory (or params directory); several comma-separated
  c.stages = ""  # "pretrain=runs/a,sft=runs/b,dpo=runs/c" -> also a stage table
  c.data_root = ""  # empty: $MODERNLM_SHARED_DATA, else ../shared/data next to the repository
  c.batch_size = 16  # rows per forward pass (the GPT-2 protocol corpus keeps its own 32)
  c.context = 0  # 0: the length the checkpoint was trained at (data.seq_len), else its max_len capped at 1024
  c.eval = ml_collections.ConfigDict(
    dict(
      text="",  # any text file or glob: also scored for perplexity and bits/byte (as one stream)
      split="",  # "test" | "valid": the split of WikiText-2/103 and PTB ("" = the suite's: test)
      stride=0,  # > 0: perplexity windows advance by this many tokens (overlapping); 0 = the context
    )
  )
  c.seed = 0
  c.attention_impl = ""  # empty: the kernel stored with the checkpoint
  c.require_gpt2_protocol = True  # full suite: stop unless the tokenizer is GPT-2 BPE
  # Empty kind: the checkpoint's own tokenizer (GPT-2 BPE for an imported 50257-vocab params directory).
  c.tokenizer = ml_collections.ConfigDict(dict(kind="", path=""))
  return c

"""Inference speed of randomly initialised presets through `generate()`, the function users call.

    python benchmarks/decode_speed.py gpt2-125m modern-253m hybrid-125m [--dtype=bfloat16] [--prefill=512]
        [--decode=256] [--batch=1] [--hf]

For each preset: `prefill` = the median time of `generate(prompt, max_new_tokens=1)` (the prompt through
the cache in one chunk plus one sampled token); `decode` = tokens/s of the extra tokens of
`generate(prompt, max_new_tokens=N)`, i.e. (N - 1) · batch / (t_N - t_1) with medians over `--repeats`
calls, first (compiling) call excluded. Greedy, no stop token, so every call decodes exactly N tokens.
`--hf` also times Hugging Face transformers' `GPT2LMHeadModel.generate` (greedy, KV cache, random
weights of the same shape, float32) in the same process for gpt2-family presets, and prints the ratio.
Weights are random: this measures speed only. One JSON line per preset, a table last.
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from modernlm_jax.generate import generate
from modernlm_jax.model import init_params
from modernlm_jax.model.scales import preset


def _median_time(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_generate(params, cfg, prompts, n_new: int, repeats: int) -> dict:
  run = lambda n: generate(params, cfg, prompts, max_new_tokens=n, cache_len=len(prompts[0]) + n_new)
  t1 = _median_time(lambda: run(1), repeats)
  tn = _median_time(lambda: run(n_new), repeats)
  extra = (n_new - 1) * len(prompts)
  return {
    "prefill": {"n_tokens": len(prompts[0]), "batch": len(prompts), "median_s": t1},
    "decode": {
      "n_tokens": n_new,
      "batch": len(prompts),
      "total_s": tn,
      "tokens_per_s": extra / max(tn - t1, 1e-9) if n_new > 1 else float("nan"),
    },
  }


def measure_hf(cfg, prompts, n_new: int, repeats: int) -> dict:
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel

  hf_cfg = GPT2Config(
    vocab_size=cfg.vocab_size,
    n_positions=cfg.max_len,
    n_embd=cfg.d_model,
    n_layer=cfg.n_layers,
    n_head=cfg.n_heads,
    n_inner=cfg.d_ff,
  )
  model = GPT2LMHeadModel(hf_cfg).eval()
  ids = torch.tensor(prompts)

  def run(n):
    with torch.no_grad():
      model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
      )

  t1 = _median_time(lambda: run(1), repeats)
  tn = _median_time(lambda: run(n_new), repeats)
  return {
    "prefill": {"median_s": t1},
    "decode": {"tokens_per_s": (n_new - 1) * len(prompts) / max(tn - t1, 1e-9)},
    "threads": torch.get_num_threads(),
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("presets", nargs="+")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--prefill", type=int, default=1024, help="prompt tokens")
  ap.add_argument("--decode", type=int, default=256, help="new tokens")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--hf", action="store_true", help="also time transformers' GPT-2 generate (gpt2 presets)")
  args = ap.parse_args()
  if args.decode < 2 or args.prefill < 1 or args.batch < 1:
    ap.error("--decode must be >= 2 (decode speed is the difference of two lengths), --prefill and --batch >= 1")
  rows = []
  for name in args.presets:
    cfg = preset(name).replace(dtype=args.dtype)
    n_prompt = min(args.prefill, cfg.max_len - args.decode)
    if n_prompt < 1:
      ap.error(f"--decode={args.decode} leaves no room for a prompt in {name}'s max_len={cfg.max_len}")
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, (args.batch, n_prompt)).tolist()
    out = measure_generate(init_params(cfg, 0), cfg, prompts, args.decode, args.repeats)
    if args.hf and cfg.family == "gpt2":
      hf = measure_hf(cfg, prompts, args.decode, args.repeats)
      out["hf"] = hf
      out["decode_vs_hf"] = out["decode"]["tokens_per_s"] / hf["decode"]["tokens_per_s"]
      out["prefill_vs_hf"] = out["prefill"]["median_s"] / hf["prefill"]["median_s"]
    print(json.dumps({"preset": name, "device": jax.devices()[0].device_kind, "dtype": args.dtype, **out}), flush=True)
    rows.append((name, out))
  print(f"{'preset':<16}{'batch':>6}{'prefill ms':>12}{'decode tok/s':>14}{'HF prefill ms':>15}{'HF decode tok/s':>17}")
  for name, out in rows:
    pre, dec, hf = out["prefill"], out["decode"], out.get("hf")
    hf_cols = (
      f"{1e3 * hf['prefill']['median_s']:>15.2f}{hf['decode']['tokens_per_s']:>17.1f}" if hf else f"{'-':>15}{'-':>17}"
    )
    print(f"{name:<16}{pre['batch']:>6}{1e3 * pre['median_s']:>12.2f}{dec['tokens_per_s']:>14.1f}{hf_cols}")


if __name__ == "__main__":
  main()

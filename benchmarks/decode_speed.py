"""Batch-1 inference speed of randomly initialised presets: prefill and greedy KV-cache/state decode.

    python benchmarks/decode_speed.py gpt2-125m modern-253m hybrid-125m [--dtype=bfloat16] [--decode=256]

Each preset runs in this process one after another through the comparison task's inference protocol
(`tasks/compare_inference.measure`: first call excluded, every timed call synchronised). Weights are
random, so this measures speed only. Prints one JSON line per preset and a table last.
"""

import argparse
import json

import jax

from modernlm_jax.compare.inference import measure
from modernlm_jax.model import init_params
from modernlm_jax.model.scales import preset


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("presets", nargs="+")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--prefill", type=int, default=1024)
  ap.add_argument("--decode", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()
  rows = []
  for name in args.presets:
    cfg = preset(name).replace(dtype=args.dtype)
    plan = {"prefill_tokens": min(args.prefill, cfg.max_len), "prefill_repeats": args.repeats * 4,
            "decode_tokens": min(args.decode, cfg.max_len), "decode_repeats": args.repeats,
            "context_lengths": [], "context_repeats": 1, "memory": False}
    out = measure(init_params(cfg, 0), cfg, plan)
    print(json.dumps({"preset": name, "device": jax.devices()[0].device_kind, "dtype": args.dtype, **out}), flush=True)
    rows.append((name, out))
  print(f"{'preset':<16}{'prefill ms':>12}{'decode tok/s':>14}")
  for name, out in rows:
    pre, dec = out["prefill"], out["decode"]
    print(f"{name:<16}{1e3 * pre.get('median_s', float('nan')):>12.2f}{dec.get('tokens_per_s', float('nan')):>14.1f}")


if __name__ == "__main__":
  main()

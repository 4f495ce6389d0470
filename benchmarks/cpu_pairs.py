"""CPU training speed of this checkout against our torch reference (eager), in interleaved pairs.

    nice python benchmarks/cpu_pairs.py --rounds=2 --dtypes=float32,bfloat16 [--baseline=/path/to/old/checkout]

Each measurement is a fresh process: ours builds the training loop's own step through `jobs/bench.py`
(gpt2 family at the shape below, synthetic batches, `attention_impl=auto`), the reference is
`benchmarks/torch_reference.py` (eager on CPU). Pairs are interleaved (ours, [baseline,] torch, repeat)
so load drifts on a shared machine hit both sides. Reported per run: tokens/s (wall) and tokens per
CPU-second (process CPU time over all threads: steadier when other jobs share the cores). Prints one
JSON line per run and a summary of median ratios last. `--glibc-hugetlb` runs ours with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (must be set before the process starts, hence a fresh process).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_JAX_SNIPPET = r"""
import importlib.util, json, sys, tempfile, time
from modernlm_jax.jobs import bench
spec = importlib.util.spec_from_file_location("bench_config", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
c = module.get_config("gpt2-125m")
L, D, H, V, B, T, steps, dtype = sys.argv[2:10]
c.model.update(dict(n_layers=int(L), d_model=int(D), n_heads=int(H), d_ff=4 * int(D), vocab_size=int(V),
                    max_len=int(T)))
c.bench.update(dict(batch_size=int(B), seq_len=int(T), steps=int(steps), warmup=2, dtype=dtype))
c.mesh.update(dict(data=1, fsdp=1, tensor=1))
setup = bench.build(bench.resolve(c), tempfile.mkdtemp())
setup.warm_up()
c0 = time.process_time()
seconds, _ = setup.run_steps(int(steps))
cpu = time.process_time() - c0
tokens = int(B) * int(T) * int(steps)
print(json.dumps({"impl": "jax", "tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu,
                  "step_ms": 1e3 * seconds / int(steps), "compile_s": setup.compile_s, "kernel": setup.kernel[0]}))
"""


def _run(cmd, env, timeout=600):
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{cmd[:3]} failed (rc {proc.returncode}): {proc.stderr[-1500:]}")
  return json.loads(lines[-1])


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--shape", default="4,256,4,8192,8,256", help="layers,d_model,heads,vocab,batch,seq")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--baseline", default="", help="another checkout of this repo, timed the same way")
  ap.add_argument("--glibc-hugetlb", action="store_true")
  args = ap.parse_args(argv)
  L, D, H, V, B, T = args.shape.split(",")
  sides = [("ours", REPO)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
  results = []
  for r in range(args.rounds):
    for dtype in args.dtypes.split(","):
      for name, root in sides:
        env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
        if args.glibc_hugetlb:
          env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
        if name == "ours":
          env.pop("XLA_FLAGS", None)
        else:  # the old main.py applied the YNN workaround to every run; time the baseline as it ran
          env["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type="
        out = _run(
          [
            sys.executable,
            "-c",
            _JAX_SNIPPET,
            str(root / "configs" / "bench.py"),
            L,
            D,
            H,
            V,
            B,
            T,
            str(args.steps),
            dtype,
          ],
          env,
        )
        results.append({"side": name, "dtype": dtype, "round": r, **out})
        print(json.dumps(results[-1]), flush=True)
      out = _run(
        [
          sys.executable,
          str(REPO / "benchmarks" / "torch_reference.py"),
          f"--n_layer={L}",
          f"--n_embd={D}",
          f"--n_head={H}",
          f"--vocab={V}",
          f"--batch={B}",
          f"--seq={T}",
          f"--steps={args.steps}",
          "--warmup=2",
          f"--dtype={dtype}",
          "--device=cpu",
        ],
        dict(os.environ),
      )
      results.append({"side": "torch", "dtype": dtype, "round": r, **out})
      print(json.dumps(results[-1]), flush=True)
  print(f"{'dtype':<10}{'side':<10}{'tok/s (median)':>16}{'tok/cpu-s':>12}{'× torch wall':>14}{'× torch cpu':>13}")
  for dtype in args.dtypes.split(","):
    torch_rows = [x for x in results if x["side"] == "torch" and x["dtype"] == dtype]
    for name in [s for s, _ in sides] + ["torch"]:
      rows = [x for x in results if x["side"] == name and x["dtype"] == dtype]
      wall = statistics.median(x["tokens_per_s"] for x in rows)
      cpu = statistics.median(x["tokens_per_cpu_s"] for x in rows)
      # ratios per round (the pair), then the median over rounds
      rw = statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(rows, torch_rows))
      rc = statistics.median(a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"] for a, b in zip(rows, torch_rows))
      print(f"{dtype:<10}{name:<10}{wall:>16.0f}{cpu:>12.0f}{rw:>14.2f}{rc:>13.2f}")


if __name__ == "__main__":
  main()

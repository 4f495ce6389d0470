"""Our flash attention against the einsum reference and XLA/cuDNN attention: errors and fwd+bwd time.

    python benchmarks/flash_check.py                 # GPU: B=4, T=1024, H=12, Dh=64, bf16, every option
    python benchmarks/flash_check.py --seq=64 --batch=1 --heads=2   # CPU (Pallas interpreter): correctness only

For each option set (causal, segments, alibi, sinks, all) prints one JSON line: max |error| of the output
and of dq/dk/dv/dsink against `reference_attention` (float32 softmax), and the median time of a jitted
forward+backward for our kernel and for the baseline the model would otherwise use (cuDNN for plain causal
bf16 on GPU, XLA attention with a materialised mask/bias elsewhere, the reference for sinks).
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from modernlm_jax.model import positions as pos_lib
from modernlm_jax.model.attention import reference_attention
from modernlm_jax.model.kernels.flash import flash_attention

OPTIONS = {
  "causal": {},
  "segments": dict(segments=True),
  "alibi": dict(alibi=True),
  "sinks": dict(sinks=True),
  "all": dict(segments=True, alibi=True, sinks=True),
}


def _time(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--heads", type=int, default=12)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--block", type=int, default=64)
  args = ap.parse_args()
  on_gpu = jax.default_backend() == "gpu"
  B, T, H, Dh = args.batch, args.seq, args.heads, args.head_dim
  dt = jnp.dtype(args.dtype)
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(x, (B, T, H, Dh), jnp.float32).astype(dt) for x in ks[:3])
  w = jax.random.normal(ks[3], (B, T, H, Dh), jnp.float32)
  sink = jnp.linspace(-1.0, 1.0, H)
  lengths = np.random.default_rng(0).integers(T // 8, T // 2, size=(B, 8))
  seg_np = np.zeros((B, T), np.int32)
  pos_np = np.zeros((B, T), np.int32)
  for b in range(B):  # packed documents of random lengths; positions restart in each
    ends = np.minimum(np.cumsum(lengths[b]), T)
    start = 0
    for i, end in enumerate(list(ends) + [T]):
      seg_np[b, start:end], pos_np[b, start:end] = i, np.arange(end - start)
      start = max(start, end)
  for name, opt in OPTIONS.items():
    seg = jnp.asarray(seg_np) if opt.get("segments") else None
    pos = jnp.asarray(pos_np) if opt.get("segments") else jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    slopes = pos_lib.alibi_slopes(H) if opt.get("alibi") else None
    s = sink if opt.get("sinks") else None

    def mask_bias():
      m = jnp.tril(jnp.ones((T, T), bool))[None]
      if seg is not None:
        m = m & (seg[:, :, None] == seg[:, None, :])
      return m, (pos_lib.alibi_bias(pos, pos, H) if slopes is not None else None)

    def ref(q, k, v, s):
      m, bias = mask_bias()
      return reference_attention(q, k, v, m, bias, s)

    def ours(q, k, v, s):
      return flash_attention(
        q,
        k,
        v,
        segment_ids_BT=seg,
        positions_BT=pos,
        alibi_slopes_H=slopes,
        sink_H=s,
        block=args.block,
        interpret=not on_gpu,
      )

    def baseline(q, k, v, s):
      if s is not None:
        return ref(q, k, v, s)
      if on_gpu and seg is None and slopes is None and dt != jnp.float32:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
      m, bias = mask_bias()
      return jax.nn.dot_product_attention(
        q, k, v, bias=None if bias is None else bias.astype(dt), mask=m[:, None], implementation="xla"
      )

    s_arg = s if s is not None else jnp.zeros((H,))
    grad = lambda f: jax.jit(
      jax.value_and_grad(
        lambda q, k, v, s: jnp.sum(f(q, k, v, s if opt.get("sinks") else None).astype(jnp.float32) * w),
        argnums=(0, 1, 2, 3),
      )
    )
    o_ref, o = jax.jit(ref)(q, k, v, s), jax.jit(ours)(q, k, v, s)
    (_, g_ref), (_, g) = grad(ref)(q, k, v, s_arg), grad(ours)(q, k, v, s_arg)
    err = lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
    row = {
      "option": name,
      "backend": jax.default_backend(),
      "shape": [B, T, H, Dh],
      "dtype": args.dtype,
      "out_err": err(o, o_ref),
      **{f"{n}_err": err(a, b) for n, a, b in zip(("dq", "dk", "dv", "dsink"), g, g_ref)},
      "out_scale": float(jnp.max(jnp.abs(o_ref.astype(jnp.float32)))),
    }
    if on_gpu:
      row["ours_fwd_bwd_ms"] = 1e3 * _time(grad(ours), (q, k, v, s_arg), args.repeats)
      row["baseline_fwd_bwd_ms"] = 1e3 * _time(grad(baseline), (q, k, v, s_arg), args.repeats)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()

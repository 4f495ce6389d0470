"""Our own GPT-2 training-step benchmark in plain PyTorch: the yardstick every speed check runs next to ours.

    python benchmarks/torch_reference.py                         # GPU: gpt2-124M, 16 × 1024, bf16, compiled
    python benchmarks/torch_reference.py --n_layer=4 --n_embd=256 --n_head=4 --vocab=8192 \
        --batch=8 --seq=256 --dtype=float32 --steps=10           # the CPU comparison shape (eager)

The model is GPT-2 (learned positions, pre-LayerNorm, GELU-tanh MLP, biases, tied embeddings, the
scaled residual init), written here from the architecture, not copied. On a GPU it uses what a fast
PyTorch GPT-2 uses: `torch.compile`, `scaled_dot_product_attention(is_causal=True)` (flash kernels),
fused AdamW, bf16 autocast with float32 weights, TF32 matmuls. On CPU it runs eager (compile is
`--compile=auto` → off there) in float32, or bf16 autocast with `--dtype=bfloat16`.

Timing: `--warmup` untimed steps, then `--steps` timed steps with one synchronisation at the end.
Prints one JSON line: {"impl": "torch", "tokens_per_s": ..., "step_ms": ..., "tokens_per_cpu_s": ...}
(tokens per second of process CPU time, all threads: steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
  def __init__(self, d: int, n_head: int, n_layer: int):
    super().__init__()
    self.n_head = n_head
    self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.fc, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
    for residual in (self.proj, self.fc_out):  # GPT-2: residual writers get std / sqrt(2 · layers)
      residual.init_std = 0.02 / math.sqrt(2 * n_layer)

  def forward(self, x):
    B, T, D = x.shape
    q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
    q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
    x = x + self.proj(a)
    return x + self.fc_out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
  def __init__(self, vocab: int, seq: int, n_layer: int, d: int, n_head: int):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq, d)
    self.blocks = nn.ModuleList(Block(d, n_head, n_layer) for _ in range(n_layer))
    self.ln_f = nn.LayerNorm(d)
    for m in self.modules():
      if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=getattr(m, "init_std", 0.02))
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)

  def forward(self, idx, targets):
    T = idx.shape[1]
    x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
    for block in self.blocks:
      x = block(x)
    logits = self.ln_f(x) @ self.wte.weight.T  # tied embeddings
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--n_layer", type=int, default=12)
  ap.add_argument("--n_embd", type=int, default=768)
  ap.add_argument("--n_head", type=int, default=12)
  ap.add_argument("--vocab", type=int, default=50304)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument(
    "--dtype", choices=("float32", "bfloat16"), default=None, help="default: bfloat16 on GPU, float32 on CPU"
  )
  ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
  ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA, off on CPU")
  ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  if args.n_embd % args.n_head:
    ap.error(f"--n_embd={args.n_embd} must be divisible by --n_head={args.n_head}")
  if min(args.n_layer, args.n_embd, args.vocab, args.batch, args.seq, args.steps) <= 0 or args.warmup < 0:
    ap.error("sizes and --steps must be positive, --warmup >= 0")
  return args


def run(args) -> dict:
  device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
  on_gpu = device.startswith("cuda")
  dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
  compiled = args.compile == "on" or (args.compile == "auto" and on_gpu)
  if args.threads:
    torch.set_num_threads(args.threads)
  if on_gpu:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  torch.manual_seed(args.seed)
  model = GPT(args.vocab, args.seq, args.n_layer, args.n_embd, args.n_head).to(device)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=3e-4,
    betas=(0.9, 0.95),
    eps=1e-8,
    fused=on_gpu,
  )
  step_model = torch.compile(model) if compiled else model
  gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
  batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen) for _ in range(4)]
  batches = [(b[:, :-1].to(device), b[:, 1:].to(device)) for b in batches]

  def step(i):
    x, y = batches[i % len(batches)]
    with torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      loss = step_model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if on_gpu else (lambda: None)
  t0 = time.perf_counter()
  for i in range(args.warmup):
    loss = step(i)
  sync()
  warmup_s = time.perf_counter() - t0
  t0, c0 = time.perf_counter(), time.process_time()
  for i in range(args.steps):
    loss = step(i)
  last = float(loss.detach())  # .item()-like read: also the CPU-side synchronisation
  sync()
  seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
  tokens = args.batch * args.seq * args.steps
  return {
    "impl": "torch",
    "device": torch.cuda.get_device_name() if on_gpu else "cpu",
    "dtype": dtype,
    "compiled": compiled,
    "threads": torch.get_num_threads(),
    "tokens_per_s": tokens / seconds,
    "step_ms": 1e3 * seconds / args.steps,
    "tokens_per_cpu_s": tokens / max(cpu_seconds, 1e-9),
    "warmup_s": warmup_s,
    "loss": last,
    "params": sum(p.numel() for p in model.parameters()),
    "shape": {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "vocab", "batch", "seq")},
  }


def main(argv=None):
  print(json.dumps(run(parse_args(argv))), flush=True)


if __name__ == "__main__":
  main()

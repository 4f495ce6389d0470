#!/usr/bin/env bash
# The prepared GPU check for issue 21, both sides in one run: our kernel's errors and speed, the training
# step for every family/option that comparisons use (vs the torch reference in the same run), decode at
# batch 1 and 8, and the hybrid's compile time. Usage: bash benchmarks/gpu_check.sh OUT
# Budget on one H100/H200: ~10 minutes (VARIANT_TIMEOUT bounds each training variant).
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
echo "=== flash kernel vs reference / cuDNN / XLA"
timeout 240 python3 "$here/flash_check.py" | tee "$out/flash_check.jsonl"
echo "=== torch reference (GPT-2 124M, 16x1024, compiled, bf16)"
timeout 300 python3 "$here/torch_reference.py" | tee "$out/torch_reference.json"
B="--config=configs/bench.py"
VARIANT_TIMEOUT=${VARIANT_TIMEOUT:-200} bash "$here/gpu_matrix.sh" "$out/matrix" \
  "gpt2|$B:gpt2-125m" \
  "gpt2-scan-fused|$B:gpt2-125m --config.model.scan_layers=True --config.model.fused_qkv=True" \
  "gpt2-real-isolated|$B:gpt2-125m --config.bench.synthetic=False --config.data.isolate_documents=True" \
  "gpt2-real-packed|$B:gpt2-125m --config.bench.synthetic=False --config.data.isolate_documents=False" \
  "modern|$B:modern-125m" \
  "modern-sinks|$B:modern-125m --config.model.attn_sinks=True" \
  "modern-rope-alibi|$B:modern-125m --config.model.positions=rope+alibi" \
  "modern-253m|$B:modern-253m" \
  "modern-253m-scan-fused|$B:modern-253m --config.model.scan_layers=True --config.model.fused_qkv=True" \
  "hybrid-autotune0|XLA_FLAGS=--xla_gpu_autotune_level=0|$B:hybrid-125m"
python3 - "$out/torch_reference.json" "$out/matrix/results.jsonl" <<'PY'
import json, sys
ref = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["tokens_per_s"]
for line in open(sys.argv[2]):
  r = json.loads(line)
  print(f"{r['variant']:<26}{r['result']['tokens_per_s']:>11,.0f} tok/s  {r['result']['tokens_per_s'] / ref:5.2f}x torch")
PY
echo "=== decode through generate(), batch 1 and 8"
for b in 1 8; do timeout 240 python3 "$here/decode_speed.py" gpt2-125m modern-253m --batch=$b --prefill=512 --decode=256 | tail -3; done

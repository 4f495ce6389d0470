#!/usr/bin/env bash
# Runs several bench variants in one call on a GPU machine and prints a summary table last.
#   bash benchmarks/gpu_matrix.sh OUTDIR "name|[ENV=value ...|]--config=configs/bench.py:gpt2-125m --config.bench.remat=dots" ...
# PYTHON (default python3) is the interpreter that runs each variant.
# Each variant's full log goes to OUTDIR/<name>.log and its JSON line to OUTDIR/results.jsonl.
# VARIANT_TIMEOUT (seconds, default 240) bounds each variant so one hang cannot eat the whole lease;
# run folders go under BENCH_WORK_ROOT (default /tmp), not OUTDIR, which should hold only the logs.
set -uo pipefail
out=$1; shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
for spec in "$@"; do
  name=${spec%%|*}; args=${spec#*|}; envs=""
  if [[ $args == *"|"* ]]; then envs=${args%%|*}; args=${args#*|}; fi  # "name|ENV=v ...|args"
  echo "=== $name: $envs $args"
  # shellcheck disable=SC2086
  timeout "${VARIANT_TIMEOUT:-240}" env $envs "${PYTHON:-python3}" -m modernlm_jax.main $args --workdir="${BENCH_WORK_ROOT:-/tmp}/bench_$name" >"$out/$name.log" 2>&1
  rc=$?
  line=$(grep -m1 '^{"preset"' "$out/$name.log")
  if [ -n "$line" ]; then
    echo "{\"variant\": \"$name\", \"result\": $line}" >>"$out/results.jsonl"
  else
    echo "variant $name failed (rc $rc); last lines:"; tail -5 "$out/$name.log"
  fi
  grep -A30 '^trace:' "$out/$name.log" | head -32 || true
done
"${PYTHON:-python3}" - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if len(sys.argv) > 1 else []
print(f"{'variant':<24}{'tok/s':>11}{'step ms':>9}{'MFU':>7}{'peak GB':>9}{'compile s':>10}  kernel")
for r in rows:
  x = r["result"]
  mfu = f"{100 * x['mfu']:.1f}%" if x["mfu"] else "-"
  print(f"{r['variant']:<24}{x['tokens_per_s']:>11,.0f}{x['step_ms']:>9.1f}{mfu:>7}"
        f"{x['peak_memory_bytes'] / 1e9:>9.2f}{x['compile_s']:>10.1f}  {x['config']['attention_kernel']}")
PY

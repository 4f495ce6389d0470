#!/usr/bin/env bash
# Dumps the optimised HLO of one bench preset's train step into OUT/hlo.tgz (one file: the device tool
# returns at most a few files). Usage: bash benchmarks/hlo_dump.sh OUT --config=configs/bench.py:gpt2-125m
set -uo pipefail
out=$1; shift
rm -rf /tmp/hlo_dump
XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=/tmp/hlo_dump --xla_dump_hlo_as_text" \
  timeout 200 "${PYTHON:-python3}" -m modernlm_jax.main "$@" --config.bench.steps=2 --config.bench.warmup=1 --workdir=/tmp/bench_hlo \
  >"$out/hlo_run.log" 2>&1
(cd /tmp/hlo_dump && tar czf "$out/hlo.tgz" $(ls | grep -i "step_fn.*after_optimizations\.txt$\|step_fn.*buffer-assignment" ))
ls -la "$out/hlo.tgz"

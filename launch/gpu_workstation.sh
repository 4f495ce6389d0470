#!/usr/bin/env bash
# Train on one machine with one or more NVIDIA GPUs: one process drives every visible GPU (no distributed setup).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu_workstation.sh --workdir DIR [options] [-- MAIN_FLAGS...]

Installs this checkout with CUDA jax, checks that jax sees the GPUs, then runs
  python -m modernlm_jax.main --config=CONFIG[:PRESET] --workdir=DIR MAIN_FLAGS...

Required:
  --workdir DIR         run directory (checkpoints, logs, metrics); rerunning resumes from it

Options:
  --config FILE         config file (default: configs/pretrain.py)
  --preset NAME         config preset, passed as --config=FILE:NAME (e.g. modern-30m)
  --gpus LIST           CUDA_VISIBLE_DEVICES, e.g. 0 or 0,1 (default: all GPUs)
  --venv DIR            create (if missing) and use this virtualenv (default: the current python3)
  --python BIN          interpreter used to create the venv or to run (default: python3)
  --mem-fraction F      XLA_PYTHON_CLIENT_MEM_FRACTION, share of GPU memory jax preallocates (default: jax's 0.75)
  --skip-install        do not pip install (already installed)
  --dry-run             print every command and run nothing
  -h, --help            show this help

Example:
  launch/gpu_workstation.sh --workdir runs/m30 --preset modern-30m --gpus 0 -- --config.train.batch_size=32
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKDIR="" CONFIG="configs/pretrain.py" PRESET="" GPUS="" VENV="" PYTHON="python3" MEM_FRACTION="" SKIP_INSTALL=0
MAIN_FLAGS=()
while [[ $# -gt 0 ]]; do
  common_flag "$@"
  if (( SHIFT_BY )); then shift "$SHIFT_BY"; continue; fi
  case "$1" in
    --gpus) GPUS="${2:?--gpus needs a value}"; shift 2 ;;
    --venv) VENV="${2:?--venv needs a value}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs a value}"; shift 2 ;;
    --mem-fraction) MEM_FRACTION="${2:?--mem-fraction needs a value}"; shift 2 ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --) shift; MAIN_FLAGS=("$@"); break ;;
    *) die_usage "unknown argument '$1' (flags for the training program go after --)" ;;
  esac
done

[[ -n $WORKDIR ]] || die_usage "--workdir is required"
[[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die_usage "--gpus takes comma-separated GPU indices, got '$GPUS'"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"  # configs/ paths in the training command are relative to the repository

if [[ -n $VENV ]]; then
  if [[ ! -x $VENV/bin/python ]]; then
    run "$PYTHON" -m venv "$VENV"
  fi
  PYTHON="$VENV/bin/python"
fi

if [[ $SKIP_INSTALL == 0 ]]; then
  run "$PYTHON" -m pip install -U pip
  run "$PYTHON" -m pip install -e "${REPO_ROOT}[dev,gpu]"
fi

env_vars=()
[[ -n $GPUS ]] && env_vars+=("CUDA_VISIBLE_DEVICES=$GPUS")
[[ -n $MEM_FRACTION ]] && env_vars+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION")

# Fail here, in seconds, rather than train for hours on the CPU because the CUDA wheels did not load.
check_gpu='import jax; print(jax.devices()); '
check_gpu+='assert jax.default_backend() == "gpu", "jax sees no GPU: check nvidia-smi, then pip install -e .[gpu]"'
run env "${env_vars[@]}" "$PYTHON" -c "$check_gpu"

config_arg="$CONFIG"
[[ -n $PRESET ]] && config_arg="$CONFIG:$PRESET"
run env "${env_vars[@]}" "$PYTHON" -m modernlm_jax.main "--config=$config_arg" "--workdir=$WORKDIR" "${MAIN_FLAGS[@]}"

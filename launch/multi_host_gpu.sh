#!/usr/bin/env bash
# Train on several GPU hosts: one process per host drives all of that host's GPUs, and the processes meet
# through jax.distributed.initialize(), configured by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/multi_host_gpu.sh --mode slurm --nodes N --workdir DIR [options] [-- MAIN_FLAGS...]
       launch/multi_host_gpu.sh --mode ssh --hosts H1,H2,... --workdir DIR [options] [-- MAIN_FLAGS...]

Runs  python3 -m modernlm_jax.main --config=CONFIG[:PRESET] --workdir=DIR MAIN_FLAGS...
as one process per host, with JAX_COORDINATOR_ADDRESS (first host:PORT), JAX_NUM_PROCESSES and
JAX_PROCESS_ID exported for jax.distributed.initialize().

Required:
  --mode slurm|ssh      slurm: write a batch script and sbatch it; ssh: start one process per host over ssh
  --workdir DIR         run directory on storage every host shares (NFS/Lustre path or gs://...)

slurm mode:
  --nodes N             number of nodes (required)
  --gpus-per-node G     GPUs per node (default: 8)
  --partition P         SLURM partition
  --account A           SLURM account
  --time T              time limit (default: 24:00:00)
  --job-name NAME       job name (default: modernlm_jax)
  --script FILE         where to write the batch script (default: LOG_DIR/JOB_NAME.sbatch)

ssh mode:
  --hosts LIST          comma-separated hosts; the first one is process 0 and the coordinator (required)
  --coordinator ADDR    address the other hosts reach the first one at (default: the first host name)
  --remote-dir DIR      repository path on every host (default: this checkout's path)
  --sync                rsync this checkout to --remote-dir on every host first

Common options:
  --config FILE         config file (default: configs/pretrain.py)
  --preset NAME         config preset, passed as --config=FILE:NAME (e.g. modern-253m)
  --port P              coordinator port (default: 8476)
  --python BIN          python on the hosts (default: python3)
  --log-dir DIR         local directory for logs and the batch script (default: logs)
  --skip-install        do not pip install (slurm: installs once from this host into the shared environment;
                        ssh: installs on every host)
  --dry-run             print every command (and the batch script) and run nothing
  -h, --help            show this help

Examples:
  launch/multi_host_gpu.sh --mode slurm --nodes 4 --partition gpu --workdir /shared/runs/m253 --preset modern-253m
  launch/multi_host_gpu.sh --mode ssh --hosts gpu1,gpu2 --sync --workdir /nfs/runs/m253 --preset modern-253m
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="" WORKDIR="" NODES="" GPUS_PER_NODE=8 PARTITION="" ACCOUNT="" TIME_LIMIT="24:00:00" JOB_NAME="modernlm_jax"
SCRIPT="" HOSTS="" COORDINATOR="" REMOTE_DIR="$REPO_ROOT" SYNC=0 CONFIG="configs/pretrain.py" PRESET="" PORT=8476
PYTHON="python3" LOG_DIR="logs" SKIP_INSTALL=0
MAIN_FLAGS=()
while [[ $# -gt 0 ]]; do
  common_flag "$@"
  if (( SHIFT_BY )); then shift "$SHIFT_BY"; continue; fi
  case "$1" in
    --mode) MODE="${2:?--mode needs a value}"; shift 2 ;;
    --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
    --gpus-per-node) GPUS_PER_NODE="${2:?--gpus-per-node needs a value}"; shift 2 ;;
    --partition) PARTITION="${2:?--partition needs a value}"; shift 2 ;;
    --account) ACCOUNT="${2:?--account needs a value}"; shift 2 ;;
    --time) TIME_LIMIT="${2:?--time needs a value}"; shift 2 ;;
    --job-name) JOB_NAME="${2:?--job-name needs a value}"; shift 2 ;;
    --script) SCRIPT="${2:?--script needs a value}"; shift 2 ;;
    --hosts) HOSTS="${2:?--hosts needs a value}"; shift 2 ;;
    --coordinator) COORDINATOR="${2:?--coordinator needs a value}"; shift 2 ;;
    --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift 2 ;;
    --sync) SYNC=1; shift ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs a value}"; shift 2 ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a value}"; shift 2 ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --) shift; MAIN_FLAGS=("$@"); break ;;
    *) die_usage "unknown argument '$1' (flags for the training program go after --)" ;;
  esac
done

[[ -n $MODE ]] || die_usage "--mode is required (slurm or ssh)"
[[ -n $WORKDIR ]] || die_usage "--workdir is required"
[[ $PORT =~ ^[0-9]+$ ]] || die_usage "--port must be a number, got '$PORT'"

config_arg="$CONFIG"
[[ -n $PRESET ]] && config_arg="$CONFIG:$PRESET"
main_cmd=("$PYTHON" -m modernlm_jax.main "--config=$config_arg" "--workdir=$WORKDIR" "${MAIN_FLAGS[@]}")
# A gs:// workdir needs the GCS client (gcsfs) on every host.
EXTRAS="gpu"
[[ $WORKDIR == gs://* ]] && EXTRAS="gpu,gcs"

launch_slurm() {
  [[ -n $NODES ]] || die_usage "--nodes is required with --mode slurm"
  [[ $NODES =~ ^[1-9][0-9]*$ ]] || die_usage "--nodes must be a positive number, got '$NODES'"
  [[ -n $HOSTS ]] && die_usage "--hosts is for --mode ssh; SLURM picks the nodes"
  local script="${SCRIPT:-$LOG_DIR/$JOB_NAME.sbatch}"
  local directives=(
    "--job-name=$JOB_NAME" "--nodes=$NODES" "--ntasks-per-node=1" "--gpus-per-node=$GPUS_PER_NODE"
    "--time=$TIME_LIMIT" "--output=$LOG_DIR/%x-%j.out")
  [[ -n $PARTITION ]] && directives+=("--partition=$PARTITION")
  [[ -n $ACCOUNT ]] && directives+=("--account=$ACCOUNT")
  local body
  body="#!/usr/bin/env bash"$'\n'
  for d in "${directives[@]}"; do body+="#SBATCH $d"$'\n'; done
  body+=$(cat <<EOF
set -euo pipefail
cd $(shell_quote "$REPO_ROOT")
# One task per node drives all its GPUs. jax can also read SLURM's own variables; exporting the JAX_* ones
# makes the rendezvous explicit and identical to the ssh launcher.
export JAX_COORDINATOR_ADDRESS="\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1):$PORT"
export JAX_NUM_PROCESSES="\$SLURM_NTASKS"
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c 'export JAX_PROCESS_ID="\$SLURM_PROCID"; exec "\$@"' _ \\
    $(shell_quote "${main_cmd[@]}")
EOF
)
  body+=$'\n'

  if [[ $SKIP_INSTALL == 0 ]]; then
    # The nodes share this filesystem (and environment), so one install from here serves all of them.
    run "$PYTHON" -m pip install -e "${REPO_ROOT}[$EXTRAS]"
  fi
  run mkdir -p "$LOG_DIR"
  echo "+ write $script:"
  printf '%s' "$body" | sed 's/^/    /'
  if [[ $DRY_RUN == 0 ]]; then printf '%s' "$body" > "$script"; fi
  run sbatch "$script"
}

launch_ssh() {
  [[ -n $HOSTS ]] || die_usage "--hosts is required with --mode ssh"
  [[ -n $NODES ]] && die_usage "--nodes is for --mode slurm; with ssh the host list sets the count"
  local hosts=()
  IFS=',' read -r -a hosts <<< "$HOSTS"
  local n=${#hosts[@]}
  local coordinator="${COORDINATOR:-${hosts[0]}}:$PORT"
  local remote_dir_q
  remote_dir_q=$(shell_quote "$REMOTE_DIR")

  for host in "${hosts[@]}"; do
    if [[ $SYNC == 1 ]]; then
      run rsync -az --delete --exclude=.git --exclude=runs --exclude=logs --exclude=__pycache__ \
          "$REPO_ROOT/" "$host:$REMOTE_DIR/"
    fi
    if [[ $SKIP_INSTALL == 0 ]]; then
      run ssh "$host" "cd $remote_dir_q && $(shell_quote "$PYTHON") -m pip install -e '.[$EXTRAS]'"
    fi
  done

  run mkdir -p "$LOG_DIR"
  local pids=() i
  for ((i = 0; i < n; i++)); do
    local remote="cd $remote_dir_q && JAX_COORDINATOR_ADDRESS=$coordinator JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i"
    remote+=" $(shell_quote "${main_cmd[@]}")"
    local log="$LOG_DIR/$JOB_NAME-$i-${hosts[$i]}.log"
    # -tt gives the remote process a terminal, so it is hung up (and exits) when this ssh client goes away.
    echo "+ $(shell_quote ssh -tt "${hosts[$i]}" "$remote") < /dev/null > $(shell_quote "$log") 2>&1 &"
    if [[ $DRY_RUN == 0 ]]; then
      ssh -tt "${hosts[$i]}" "$remote" < /dev/null > "$log" 2>&1 &
      pids+=($!)
    fi
  done
  if [[ $DRY_RUN == 1 ]]; then echo "+ wait  # for all $n processes; any failure fails the launch"; return 0; fi

  # Ctrl-C stops the local ssh clients, which hangs up the remote training processes.
  trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
  local failed=0
  for ((i = 0; i < n; i++)); do
    if ! wait "${pids[$i]}"; then
      echo "process $i on ${hosts[$i]} failed; see $LOG_DIR/$JOB_NAME-$i-${hosts[$i]}.log" >&2
      failed=1
    fi
  done
  return $failed
}

case "$MODE" in
  slurm) launch_slurm ;;
  ssh) launch_ssh ;;
  *) die_usage "--mode must be slurm or ssh, got '$MODE'" ;;
esac

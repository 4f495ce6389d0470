#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single host like v4-8, or a multi-host pod slice like v4-32).
# Every worker runs the same command; on TPU, jax.distributed.initialize() discovers the other workers itself.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --workdir DIR [options] [-- MAIN_FLAGS...]

Creates a TPU VM, puts this code on every worker, installs it, and runs
  python3 -m modernlm_jax.main --config=CONFIG[:PRESET] --workdir=DIR MAIN_FLAGS...
on all workers at once (gcloud ... ssh --worker=all).

Required:
  --name NAME           TPU VM name
  --zone ZONE           e.g. us-central2-b (v4), europe-west4-a (v3)
  --workdir DIR         run directory; on a multi-host slice it must be shared by all workers (gs://BUCKET/PATH)

Options:
  --project ID          gcloud project (default: gcloud's configured project)
  --accelerator TYPE    accelerator type (default: v4-8)
  --version IMAGE       TPU VM software version (default: tpu-ubuntu2204-base)
  --spot                create a spot (preemptible) TPU VM
  --config FILE         config file (default: configs/pretrain.py)
  --preset NAME         config preset, passed as --config=FILE:NAME (e.g. modern-30m)
  --repo URL            git clone URL for the workers (default: copy this checkout with scp)
  --branch REF          branch or tag to clone with --repo
  --remote-dir DIR      code directory on each worker, relative to its home (default: modernlm_jax)
  --steps LIST          comma-separated subset of create,copy,install,run,delete
                        (default: create,copy,install,run; add delete to remove the VM afterwards)
  --dry-run             print every command and run nothing
  -h, --help            show this help

Example:
  launch/tpu_pod.sh --name lm-v4 --zone us-central2-b --accelerator v4-32 \
      --workdir gs://my-bucket/runs/m30 --preset modern-30m -- --config.train.steps=20000
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="" ZONE="" WORKDIR="" PROJECT="" ACCELERATOR="v4-8" VERSION="tpu-ubuntu2204-base" SPOT=0
CONFIG="configs/pretrain.py" PRESET="" REPO_URL="" BRANCH="" REMOTE_DIR="modernlm_jax" STEPS="create,copy,install,run"
MAIN_FLAGS=()
while [[ $# -gt 0 ]]; do
  common_flag "$@"
  if (( SHIFT_BY )); then shift "$SHIFT_BY"; continue; fi
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --accelerator) ACCELERATOR="${2:?--accelerator needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --repo) REPO_URL="${2:?--repo needs a value}"; shift 2 ;;
    --branch) BRANCH="${2:?--branch needs a value}"; shift 2 ;;
    --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift 2 ;;
    --steps) STEPS="${2:?--steps needs a value}"; shift 2 ;;
    --) shift; MAIN_FLAGS=("$@"); break ;;
    *) die_usage "unknown argument '$1' (flags for the training program go after --)" ;;
  esac
done

[[ -n $NAME ]] || die_usage "--name is required"
[[ -n $ZONE ]] || die_usage "--zone is required"
[[ -n $WORKDIR ]] || die_usage "--workdir is required"
[[ -z $BRANCH || -n $REPO_URL ]] || die_usage "--branch needs --repo"
for step in ${STEPS//,/ }; do
  case "$step" in create|copy|install|run|delete) ;; *) die_usage "unknown step '$step' in --steps" ;; esac
done
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }

# v4-8 / v3-8 / v5litepod-8 and smaller are one host; larger slices have several workers that cannot see
# each other's local disks, so checkpoints must go to a bucket.
slice_size="${ACCELERATOR##*-}"
if [[ $slice_size =~ ^[0-9]+$ ]] && (( slice_size > 8 )) && [[ $WORKDIR != gs://* ]]; then
  echo "warning: $ACCELERATOR has several workers; --workdir $WORKDIR should be a gs:// path all of them share" >&2
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD_TARGET=("$NAME" "--zone=$ZONE")
[[ -n $PROJECT ]] && GCLOUD_TARGET+=("--project=$PROJECT")
on_all_workers() { run gcloud compute tpus tpu-vm ssh "${GCLOUD_TARGET[@]}" --worker=all "--command=$1"; }

config_arg="$CONFIG"
[[ -n $PRESET ]] && config_arg="$CONFIG:$PRESET"
main_cmd=(python3 -m modernlm_jax.main "--config=$config_arg" "--workdir=$WORKDIR" "${MAIN_FLAGS[@]}")

if has_step create; then
  create=(gcloud compute tpus tpu-vm create "${GCLOUD_TARGET[@]}" "--accelerator-type=$ACCELERATOR" "--version=$VERSION")
  [[ $SPOT == 1 ]] && create+=(--spot)
  run "${create[@]}"
fi

if has_step copy; then
  if [[ -n $REPO_URL ]]; then
    clone=(git clone --depth=1)
    [[ -n $BRANCH ]] && clone+=("--branch=$BRANCH")
    clone+=("$REPO_URL" "$REMOTE_DIR")
    # Re-running on existing workers updates the checkout instead of failing on the existing directory.
    on_all_workers "if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR pull --ff-only; else $(shell_quote "${clone[@]}"); fi"
  else
    tarball="/tmp/modernlm_jax-$NAME.tgz"
    run tar -czf "$tarball" --exclude=.git --exclude=runs --exclude='*.egg-info' --exclude=__pycache__ \
        -C "$REPO_ROOT" .
    run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:/tmp/" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} \
        --worker=all
    on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf /tmp/modernlm_jax-$NAME.tgz -C $REMOTE_DIR"
  fi
fi

if has_step install; then
  # jax[tpu] brings libtpu from PyPI, gcs the gs:// client (gcsfs); the same install runs on every worker so their
  # versions agree.
  on_all_workers "cd $REMOTE_DIR && python3 -m pip install -U pip && python3 -m pip install -e '.[tpu,gcs]'"
fi

if has_step run; then
  # pipefail makes a crash on any worker fail the ssh (tee would otherwise hide it); the log stays on each worker.
  on_all_workers "set -o pipefail; cd $REMOTE_DIR && $(shell_quote "${main_cmd[@]}") 2>&1 | tee -a ~/modernlm_jax-run.log"
fi

if has_step delete; then
  run gcloud compute tpus tpu-vm delete "${GCLOUD_TARGET[@]}" --quiet
fi

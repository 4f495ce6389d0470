# shellcheck shell=bash
# Helpers shared by the launch/*.sh scripts (sourced, not run). Each script defines its own usage().

die_usage() { echo "error: $1" >&2; usage >&2; exit 2; }

# Prints a command so it can be pasted into a shell; safe words are left bare, everything else single-quoted.
shell_quote() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

# After --dry-run every command is printed and none runs.
DRY_RUN=0
run() {
  echo "+ $(shell_quote "$@")"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# The flags every launch script takes. Sets SHIFT_BY to how many arguments it consumed (0: not one of them);
# the caller shifts that many and parses its own flags otherwise.
# shellcheck disable=SC2034  # WORKDIR, CONFIG, PRESET are the calling script's variables
common_flag() {
  SHIFT_BY=0
  case "$1" in
    --workdir) WORKDIR="${2:?--workdir needs a value}"; SHIFT_BY=2 ;;
    --config) CONFIG="${2:?--config needs a value}"; SHIFT_BY=2 ;;
    --preset) PRESET="${2:?--preset needs a value}"; SHIFT_BY=2 ;;
    --dry-run) DRY_RUN=1; SHIFT_BY=1 ;;
    -h|--help) usage; exit 0 ;;
  esac
}

# glibc's malloc on transparent huge pages: XLA:CPU maps fresh temp buffers every step and the kernel
# zero-fills each 4 KiB page on first touch (~20 % of a CPU training job; 1.17× step throughput and 36× fewer
# page faults with this set). Read by glibc at process start only, so it is exported here, before python
# runs. Needs glibc ≥ 2.35 (older ones ignore the unknown tunable); an existing GLIBC_TUNABLES is kept, and
# MODERNLM_NO_HUGETLB=1 opts out.
if [[ -z ${GLIBC_TUNABLES:-} && ${MODERNLM_NO_HUGETLB:-0} != 1 ]]; then
  export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
fi

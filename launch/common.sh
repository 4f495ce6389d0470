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

# After --dry-run (enable_dry_run) every command is printed and none runs.
DRY_RUN=0
enable_dry_run() { DRY_RUN=1; }
run() {
  echo "+ $(shell_quote "$@")"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

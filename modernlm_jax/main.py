"""Entry point: `python -m modernlm_jax.main --config=configs/<task>.py[:preset] --workdir=DIR [--config.a.b=v]`.

The task comes from `config.task`; the config is locked, so a mistyped key is an error that lists
the valid ones.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from modernlm_jax import config_check
from modernlm_jax.train import workdir_lock

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Task config file (configs/*.py), optionally with :preset.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, reports. Default: runs/<preset>.")

TASKS = ("pretrain", "sft", "dpo", "eval", "compare", "bench")
_YNN_WORKAROUND = "--xla_cpu_experimental_ynn_fusion_type="


# Config files whose runs build only what their preset and overrides name (no init_from, no comparison arms).
_PRESET_ONLY_CONFIGS = ("pretrain.py", "bench.py")


def needs_ynn_workaround(argv) -> bool:
  """Whether the run may build an RWKV layer, judged from the command line (XLA_FLAGS must be set before
  JAX initialises, which building the config already does). RWKV gradients are the only thing the YNN
  fusion breaks; the main pretraining job and the benchmark keep the fusion (≈1.1× faster attention
  training and compiles on CPU) unless a hybrid/RWKV preset or layer pattern is named. Other tasks
  (compare arms include the hybrid; SFT/DPO may start from a hybrid run) keep the workaround."""
  text = " ".join(argv).lower()
  if "rwkv" in text or "hybrid" in text:
    return True
  config_file = ""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      config_file = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      config_file = argv[i + 1]
  return os.path.basename(config_file.split(":", 1)[0]) not in _PRESET_ONLY_CONFIGS


def apply_cpu_workarounds(argv=None) -> None:
  """jaxlib 0.10's XLA:CPU YNNPACK fusion segfaults compiling the RWKV chunked gradient at strong
  decays; disabling that fusion avoids it. Only for 0.10.x, where the flag is known (an unknown flag
  in XLA_FLAGS aborts the process), only when the run may build an RWKV layer (`argv`; None = assume
  it may), and before JAX initialises its backends."""
  from importlib import metadata

  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return
  flags_now = os.environ.get("XLA_FLAGS", "")
  if not version.startswith("0.10.") or "ynn_fusion_type" in flags_now:
    return
  if argv is not None and not needs_ynn_workaround(argv):
    return
  os.environ["XLA_FLAGS"] = f"{flags_now} {_YNN_WORKAROUND}".strip()


def maybe_initialize_distributed() -> None:
  """Multi-host runs: TPU pods and SLURM are detected by JAX; plain GPU hosts pass JAX_* variables."""
  import jax

  if os.environ.get("JAX_COORDINATOR_ADDRESS") and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
    jax.distributed.initialize(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  elif os.environ.get("SLURM_NTASKS", "1") != "1" or _on_cloud_tpu_vm():
    jax.distributed.initialize()  # JAX discovers the peers (SLURM variables / TPU metadata server)


def _on_cloud_tpu_vm() -> bool:
  """Cloud TPU VMs expose accelerator device files; initializing on a single-host VM is harmless."""
  import glob

  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def check_storage(config, workdir: str) -> None:
  """gs:// locations need credentials and a bucket: checked in seconds, before anything is written anywhere."""
  from modernlm_jax import paths

  named = [workdir, str(config.get("init_from", "") or "")]
  named += [s for key in ("checkpoint", "stages") for s in str(config.get(key, "") or "").replace("=", ",").split(",")]
  for location in dict.fromkeys(s.strip() for s in named if paths.is_remote(s.strip())):
    paths.check_access(location)


def setup_compilation_cache(config) -> None:
  """The per-host persistent compilation cache (train.compilation_cache_dir; '' = off), before compiling."""
  from modernlm_jax.train import compile_cache

  train_cfg = config.get("train") or {}
  compile_cache.setup(str(train_cfg.get("compilation_cache_dir", "auto")))


def run_task(config, workdir: str):
  task = config.task
  if task == "pretrain":
    from modernlm_jax.jobs import pretrain

    return pretrain.run(config, workdir)
  if task in ("sft", "dpo"):
    from modernlm_jax.jobs import posttrain

    return posttrain.run(config, workdir)
  if task == "eval":
    from modernlm_jax.jobs import evaluate

    return evaluate.run(config, workdir)
  if task == "compare":
    from modernlm_jax.jobs import compare

    return compare.run(config, workdir)
  if task == "bench":
    from modernlm_jax.jobs import bench

    return bench.run(config, workdir)
  raise ValueError(f"config.task={task!r} is not valid; choose one of {list(TASKS)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.<key>=<value>")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
  logging.getLogger("absl").setLevel(logging.WARNING)
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", f"{config.task}-{config.get('preset', 'run')}")
  try:
    config_check.check_config(config)  # every setting, before any work (tokenizer training included)
  except config_check.ConfigError as e:
    sys.exit(f"error: {e}")
  try:
    check_storage(config, workdir)
  except RuntimeError as e:  # paths.StorageAccessError: the message names the bucket and the fix
    raise SystemExit(f"error: {e}") from None
  maybe_initialize_distributed()
  setup_compilation_cache(config)
  lock = workdir_lock.acquire(workdir)  # one run per workdir, for the job's whole life
  try:
    run_task(config, workdir)
  finally:
    workdir_lock.release(lock)
  from modernlm_jax.train import compile_cache

  compile_cache.log_stats()


def cli() -> None:
  """`python -m modernlm_jax.main` and the `modernlm-train` console script."""
  apply_cpu_workarounds(sys.argv[1:])
  try:
    config_check.check_override_keys(sys.argv[1:])  # a mistyped key: an error listing the valid keys
  except config_check.ConfigError as e:
    sys.exit(f"error: {e}")
  flags.mark_flag_as_required("config")
  app.run(main)


if __name__ == "__main__":
  cli()

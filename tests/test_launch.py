"""Launch scripts: --dry-run prints every key step, bad arguments fail with usage, and the real (non-dry) paths
issue the same commands, checked against fake gcloud / ssh / srun / python executables on PATH."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = ["tpu_pod.sh", "gpu_workstation.sh", "multi_host_gpu.sh"]
SOURCED = ["common.sh"]  # shared helpers: shellchecked, never run


def launch(script, *args, env=None, cwd=None):
  return subprocess.run(
    ["bash", str(LAUNCH / script), *args],
    capture_output=True,
    text=True,
    timeout=60,
    env={**os.environ, **(env or {})},
    cwd=cwd,
  )


def commands(out: str) -> list[str]:
  return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def fake_bin(tmp_path, name, body):
  """An executable on PATH that logs its argv (one line per call) and then runs `body`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  path = bin_dir / name
  path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{tmp_path}/calls.log"\n{body}\n')
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return bin_dir


def calls(tmp_path) -> list[str]:
  log = tmp_path / "calls.log"
  return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax_and_help(script):
  assert subprocess.run(["bash", "-n", str(LAUNCH / script)]).returncode == 0
  text = (LAUNCH / script).read_text()
  assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
  res = launch(script, "--help")
  assert res.returncode == 0 and "Usage:" in res.stdout and "--dry-run" in res.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS + SOURCED)
def test_shellcheck(script):
  res = subprocess.run(["shellcheck", "-S", "warning", str(LAUNCH / script)], capture_output=True, text=True)
  assert res.returncode == 0, res.stdout


@pytest.mark.parametrize(
  "script,args,missing",
  [
    ("tpu_pod.sh", ["--zone", "us-central2-b", "--workdir", "gs://b/r"], "--name"),
    ("tpu_pod.sh", ["--name", "n", "--workdir", "gs://b/r"], "--zone"),
    ("tpu_pod.sh", ["--name", "n", "--zone", "z"], "--workdir"),
    ("gpu_workstation.sh", ["--preset", "modern-30m"], "--workdir"),
    ("multi_host_gpu.sh", ["--workdir", "/w", "--nodes", "2"], "--mode"),
    ("multi_host_gpu.sh", ["--mode", "slurm", "--nodes", "2"], "--workdir"),
    ("multi_host_gpu.sh", ["--mode", "slurm", "--workdir", "/w"], "--nodes"),
    ("multi_host_gpu.sh", ["--mode", "ssh", "--workdir", "/w"], "--hosts"),
  ],
)
def test_missing_required_argument_exits_with_usage(script, args, missing):
  res = launch(script, *args, "--dry-run")
  assert res.returncode == 2
  assert f"{missing} is required" in res.stderr and "Usage:" in res.stderr
  assert not commands(res.stdout)  # nothing was printed as run, let alone run


@pytest.mark.parametrize(
  "script,args,message",
  [
    ("tpu_pod.sh", ["--name", "n", "--zone", "z", "--workdir", "w", "--bogus"], "unknown argument '--bogus'"),
    (
      "tpu_pod.sh",
      ["--name", "n", "--zone", "z", "--workdir", "w", "--steps", "create,launch"],
      "unknown step 'launch'",
    ),
    ("gpu_workstation.sh", ["--workdir", "w", "--gpus", "first"], "--gpus takes comma-separated"),
    ("multi_host_gpu.sh", ["--mode", "mpi", "--workdir", "w"], "--mode must be slurm or ssh"),
    (
      "multi_host_gpu.sh",
      ["--mode", "ssh", "--hosts", "a", "--nodes", "2", "--workdir", "w"],
      "--nodes is for --mode slurm",
    ),
  ],
)
def test_bad_arguments_are_rejected(script, args, message):
  res = launch(script, *args, "--dry-run")
  assert res.returncode == 2 and message in res.stderr


def test_tpu_dry_run_prints_create_copy_install_run_on_all_workers(tmp_path):
  res = launch(
    "tpu_pod.sh",
    "--name",
    "lm-v4",
    "--zone",
    "us-central2-b",
    "--project",
    "proj",
    "--accelerator",
    "v4-32",
    "--workdir",
    "gs://bucket/runs/m30",
    "--preset",
    "modern-30m",
    "--steps",
    "create,copy,install,run,delete",
    "--dry-run",
    "--",
    "--config.train.steps=100",
    env={"PATH": str(fake_bin(tmp_path, "gcloud", "exit 1")) + os.pathsep + os.environ["PATH"]},
  )
  assert res.returncode == 0, res.stderr
  assert not calls(tmp_path), "dry run must not call gcloud"
  cmds = commands(res.stdout)
  create, tar, scp, untar, install, train, delete = cmds
  assert create.startswith("gcloud compute tpus tpu-vm create lm-v4 --zone=us-central2-b --project=proj")
  assert "--accelerator-type=v4-32" in create and "--version=tpu-ubuntu2204-base" in create
  assert tar.startswith("tar -czf /tmp/modernlm_jax-lm-v4.tgz") and "--exclude=.git" in tar
  assert scp.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in scp
  for step in (untar, install, train):
    assert step.startswith("gcloud compute tpus tpu-vm ssh lm-v4 --zone=us-central2-b --project=proj --worker=all")
  assert "tar -xzf /tmp/modernlm_jax-lm-v4.tgz -C modernlm_jax" in untar
  assert "pip install -e '\\''.[tpu,gcs]'\\''" in install
  assert (
    "python3 -m modernlm_jax.main --config=configs/pretrain.py:modern-30m --workdir=gs://bucket/runs/m30 "
    "--config.train.steps=100"
  ) in train
  assert "set -o pipefail" in train
  assert delete.startswith("gcloud compute tpus tpu-vm delete lm-v4") and "--quiet" in delete


def test_tpu_git_clone_and_local_workdir_warning():
  res = launch(
    "tpu_pod.sh",
    "--name",
    "n",
    "--zone",
    "z",
    "--accelerator",
    "v4-16",
    "--workdir",
    "runs/x",
    "--repo",
    "https://example.com/modernlm_jax.git",
    "--branch",
    "main",
    "--steps",
    "copy",
    "--dry-run",
  )
  assert res.returncode == 0, res.stderr
  (clone,) = commands(res.stdout)
  assert "--worker=all" in clone and "git clone --depth=1 --branch=main https://example.com/modernlm_jax.git" in clone
  assert "should be a gs:// path" in res.stderr


def test_tpu_real_run_calls_gcloud_in_order(tmp_path):
  bin_dir = fake_bin(tmp_path, "gcloud", "exit 0")
  res = launch(
    "tpu_pod.sh",
    "--name",
    "n",
    "--zone",
    "z",
    "--workdir",
    "gs://b/r",
    "--steps",
    "create,install,run",
    env={"PATH": str(bin_dir) + os.pathsep + os.environ["PATH"]},
  )
  assert res.returncode == 0, res.stderr
  got = calls(tmp_path)
  assert [c.split()[4] for c in got] == ["create", "ssh", "ssh"]
  assert "--worker=all" in got[2] and "modernlm_jax.main" in got[2]


def test_tpu_real_run_stops_at_first_failure(tmp_path):
  bin_dir = fake_bin(tmp_path, "gcloud", 'if [[ $4 == create ]]; then exit 3; fi')
  res = launch(
    "tpu_pod.sh",
    "--name",
    "n",
    "--zone",
    "z",
    "--workdir",
    "gs://b/r",
    "--steps",
    "create,install,run",
    env={"PATH": str(bin_dir) + os.pathsep + os.environ["PATH"]},
  )
  assert res.returncode == 3 and len(calls(tmp_path)) == 1


def test_gpu_workstation_dry_run(tmp_path):
  res = launch(
    "gpu_workstation.sh",
    "--workdir",
    "runs/m30",
    "--preset",
    "modern-30m",
    "--gpus",
    "0,1",
    "--venv",
    str(tmp_path / "venv"),
    "--mem-fraction",
    "0.9",
    "--dry-run",
    "--",
    "--config.train.batch_size=32",
  )
  assert res.returncode == 0, res.stderr
  venv, pip_up, install, check, train = commands(res.stdout)
  assert venv == f"python3 -m venv {tmp_path}/venv"
  assert install.startswith(f"{tmp_path}/venv/bin/python -m pip install -e") and "[dev,gpu]" in install
  assert "jax.default_backend() == \"gpu\"" in check and "CUDA_VISIBLE_DEVICES=0,1" in check
  assert train == (
    f"env CUDA_VISIBLE_DEVICES=0,1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 {tmp_path}/venv/bin/python -m "
    "modernlm_jax.main --config=configs/pretrain.py:modern-30m --workdir=runs/m30 "
    "--config.train.batch_size=32"
  )
  assert not (tmp_path / "venv").exists()


def test_gpu_workstation_real_run_with_fake_python(tmp_path):
  bin_dir = fake_bin(tmp_path, "fakepy", "exit 0")
  res = launch("gpu_workstation.sh", "--workdir", "runs/x", "--python", str(bin_dir / "fakepy"), "--skip-install")
  assert res.returncode == 0, res.stderr
  check, train = calls(tmp_path)
  assert check.startswith("fakepy -c import jax")
  assert train == "fakepy -m modernlm_jax.main --config=configs/pretrain.py --workdir=runs/x"


def test_slurm_dry_run_prints_batch_script_with_jax_env_and_srun(tmp_path):
  res = launch(
    "multi_host_gpu.sh",
    "--mode",
    "slurm",
    "--nodes",
    "4",
    "--gpus-per-node",
    "8",
    "--partition",
    "gpu",
    "--account",
    "lab",
    "--workdir",
    "/shared/runs/m253",
    "--preset",
    "modern-253m",
    "--dry-run",
    "--",
    "--config.train.steps=10",
    cwd=tmp_path,
  )
  assert res.returncode == 0, res.stderr
  out = res.stdout
  for line in (
    "#SBATCH --nodes=4",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --partition=gpu",
    "#SBATCH --account=lab",
    "export JAX_COORDINATOR_ADDRESS=",
    "export JAX_NUM_PROCESSES=\"$SLURM_NTASKS\"",
    'JAX_PROCESS_ID="$SLURM_PROCID"',
    "srun ",
    "python3 -m modernlm_jax.main --config=configs/pretrain.py:modern-253m --workdir=/shared/runs/m253 "
    "--config.train.steps=10",
  ):
    assert line in out, line
  assert commands(out)[-1] == "sbatch logs/modernlm_jax.sbatch"
  assert any("pip install -e" in c and "[gpu]" in c for c in commands(out))
  assert list(tmp_path.iterdir()) == [], "dry run must not write the batch script"


def test_slurm_batch_script_runs_one_process_per_node(tmp_path):
  # Fake SLURM: sbatch runs the script at once; srun starts the command once per task with SLURM_PROCID set.
  fake_bin(tmp_path, "scontrol", 'echo node-a; echo node-b')
  fake_bin(tmp_path, "sbatch", 'SLURM_JOB_NODELIST="node-[a-b]" SLURM_NTASKS=2 bash "$1"')
  fake_bin(
    tmp_path, "srun", 'while [[ $1 == --* ]]; do shift; done\nfor i in 0 1; do SLURM_PROCID=$i "$@" || exit 1; done'
  )
  bin_dir = fake_bin(
    tmp_path,
    "fakepy",
    f'echo "$JAX_COORDINATOR_ADDRESS $JAX_NUM_PROCESSES $JAX_PROCESS_ID $*" >> "{tmp_path}/procs.log"',
  )
  res = launch(
    "multi_host_gpu.sh",
    "--mode",
    "slurm",
    "--nodes",
    "2",
    "--workdir",
    "/w",
    "--port",
    "9999",
    "--python",
    str(bin_dir / "fakepy"),
    "--skip-install",
    "--log-dir",
    str(tmp_path / "logs"),
    "--",
    "--config.x=a b",
    env={"PATH": str(bin_dir) + os.pathsep + os.environ["PATH"]},
  )
  assert res.returncode == 0, res.stderr
  assert (tmp_path / "logs" / "modernlm_jax.sbatch").is_file()
  procs = (tmp_path / "procs.log").read_text().splitlines()
  main = "-m modernlm_jax.main --config=configs/pretrain.py --workdir=/w --config.x=a b"
  assert procs == [f"node-a:9999 2 0 {main}", f"node-a:9999 2 1 {main}"]


def test_ssh_dry_run_exports_jax_env_per_host(tmp_path):
  res = launch(
    "multi_host_gpu.sh",
    "--mode",
    "ssh",
    "--hosts",
    "gpu1,gpu2,gpu3",
    "--coordinator",
    "10.0.0.1",
    "--remote-dir",
    "/opt/lm",
    "--sync",
    "--workdir",
    "/nfs/runs/m",
    "--dry-run",
    cwd=tmp_path,
  )
  assert res.returncode == 0, res.stderr
  cmds = commands(res.stdout)
  assert sum(c.startswith("rsync ") for c in cmds) == 3
  assert sum("pip install -e" in c for c in cmds) == 3
  runs = [c for c in cmds if "modernlm_jax.main" in c]
  assert len(runs) == 3
  for i, (host, cmd) in enumerate(zip(["gpu1", "gpu2", "gpu3"], runs)):
    assert cmd.startswith(f"ssh -tt {host} 'cd /opt/lm && ")
    assert f"JAX_COORDINATOR_ADDRESS=10.0.0.1:8476 JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={i} " in cmd
    assert cmd.endswith(f"> logs/modernlm_jax-{i}-{host}.log 2>&1 &")
  assert cmds[-1].startswith("wait")
  assert list(tmp_path.iterdir()) == []


def test_ssh_real_run_starts_all_hosts_and_reports_failure(tmp_path):
  # Fake ssh runs the remote command locally; the process on host "bad" fails.
  fake_bin(
    tmp_path,
    "ssh",
    'while [[ $1 == -* ]]; do shift; done\nhost=$1; shift\n'
    'if [[ $host == bad && $* == *modernlm_jax.main* ]]; then exit 7; fi\nbash -c "$*"',
  )
  record = f'echo "$JAX_COORDINATOR_ADDRESS $JAX_NUM_PROCESSES $JAX_PROCESS_ID" >> "{tmp_path}/procs.log"'
  bin_dir = fake_bin(tmp_path, "fakepy", f"if [[ $2 == modernlm_jax.main ]]; then {record}; fi")
  env = {"PATH": str(bin_dir) + os.pathsep + os.environ["PATH"]}
  common = [
    "--mode",
    "ssh",
    "--workdir",
    "/w",
    "--remote-dir",
    str(tmp_path),
    "--python",
    str(bin_dir / "fakepy"),
    "--log-dir",
    str(tmp_path / "logs"),
  ]
  ok = launch("multi_host_gpu.sh", *common, "--hosts", "h0,h1", env=env)
  assert ok.returncode == 0, ok.stderr
  assert sorted((tmp_path / "procs.log").read_text().splitlines()) == ["h0:8476 2 0", "h0:8476 2 1"]
  assert sum(c.startswith("fakepy -m pip install") for c in calls(tmp_path)) == 2
  bad = launch("multi_host_gpu.sh", *common, "--hosts", "h0,bad", "--skip-install", env=env)
  assert bad.returncode == 1 and "process 1 on bad failed" in bad.stderr

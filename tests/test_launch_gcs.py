"""Launch scripts with a gs:// workdir (dry runs): every host installs the GCS client and gets the same workdir."""

from test_launch import commands, launch


def test_tpu_pod_with_gs_workdir_installs_gcs_client_on_all_workers():
  res = launch(
    "tpu_pod.sh",
    "--name",
    "pod",
    "--zone",
    "us-central2-b",
    "--accelerator",
    "v4-16",
    "--workdir",
    "gs://bucket/runs/m30",
    "--steps",
    "install,run",
    "--dry-run",
  )
  assert res.returncode == 0, res.stderr
  assert "should be a gs:// path" not in res.stderr  # a bucket is what a multi-host slice needs
  install, train = commands(res.stdout)
  assert "--worker=all" in install and ".[tpu,gcs]" in install
  assert "--worker=all" in train and "--workdir=gs://bucket/runs/m30" in train


def test_slurm_with_gs_workdir_installs_gcs_extra_and_passes_the_bucket(tmp_path):
  res = launch(
    "multi_host_gpu.sh", "--mode", "slurm", "--nodes", "2", "--workdir", "gs://bucket/runs/m", "--dry-run", cwd=tmp_path
  )
  assert res.returncode == 0, res.stderr
  assert any("pip install -e" in c and "[gpu,gcs]" in c for c in commands(res.stdout))
  assert "--workdir=gs://bucket/runs/m" in res.stdout
  assert list(tmp_path.iterdir()) == []


def test_ssh_hosts_with_gs_workdir_each_install_gcs_extra(tmp_path):
  res = launch(
    "multi_host_gpu.sh",
    "--mode",
    "ssh",
    "--hosts",
    "g1,g2",
    "--workdir",
    "gs://bucket/runs/m",
    "--dry-run",
    cwd=tmp_path,
  )
  assert res.returncode == 0, res.stderr
  cmds = commands(res.stdout)
  assert sum("pip install -e" in c and "[gpu,gcs]" in c for c in cmds) == 2
  runs = [c for c in cmds if "modernlm_jax.main" in c]
  assert len(runs) == 2 and all("--workdir=gs://bucket/runs/m" in c for c in runs)


def test_local_workdir_keeps_the_plain_gpu_install(tmp_path):
  res = launch("multi_host_gpu.sh", "--mode", "ssh", "--hosts", "g1", "--workdir", "/nfs/m", "--dry-run", cwd=tmp_path)
  assert res.returncode == 0, res.stderr
  assert any("pip install -e" in c and "'.[gpu]'" in c for c in commands(res.stdout))

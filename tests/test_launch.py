"""The launch scripts parse, refuse missing arguments, and build the commands the README documents (DRY_RUN)."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, **env):
  return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], capture_output=True, text=True,
                        env=dict(os.environ, **env), timeout=60)


def test_scripts_are_valid_bash():
  for s in ("tpu_vm_create.sh", "gpu_run.sh", "setup.sh"):
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "launch", s)]).returncode == 0, s


def test_tpu_script_targets_all_workers_and_initialises_distributed():
  out = _run("tpu_vm_create.sh", "tg", "us-central2-b", "v4-32", "configs/default.py", "gs://b/r1",
             "--config.mesh.fsdp=8", DRY_RUN="1")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create tg") and "--accelerator-type=v4-32" in lines[0]
  ssh = [l for l in lines if l.startswith("gcloud") and " ssh " in l]
  assert len(ssh) == 2 and all("--worker=all" in l for l in ssh)
  assert "mesh.distributed=always" in ssh[1] and "mesh.fsdp=8" in ssh[1] and "gs://b/r1" in ssh[1]
  assert _run("tpu_vm_create.sh", "tg").returncode == 2


def test_gpu_script_builds_the_main_command():
  out = _run("gpu_run.sh", "configs/default.py", "w/r1", "--config.mesh.fsdp=8", DRY_RUN="1")
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["python", "-m", "toolgen_jax.main", "--config=configs/default.py", "--workdir=w/r1",
                                "--config.mesh.fsdp=8"]
  assert _run("gpu_run.sh").returncode == 2

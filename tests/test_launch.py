"""Launch scripts: valid bash, shellcheck-clean, a --dry-run that prints the plan."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/local_cluster.sh", "launch/tpu_pod.sh", "launch/gpu_slurm.sbatch", "launch/setup.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_valid_and_documents_its_variables(script):
    path = os.path.join(REPO, script)
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    assert shutil.which("shellcheck"), "shellcheck missing: launch/setup.sh --test installs it"
    out = subprocess.run(["shellcheck", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    head = open(path).read().split("set -euo pipefail")[0]
    assert "Variables" in head or "Variables:" in head


@pytest.mark.parametrize("script,args,expect", [
    ("launch/local_cluster.sh", ["3", "--config=configs/fashion_mnist.py:recover", "--workdir=/tmp/w"],
     "process 2: SRE2L_PROCESS_ID=2"),
    ("launch/tpu_pod.sh", ["--config=configs/imagenet.py:recover,tfds=1", "--workdir=/gcs/b/w"],
     "gcloud compute tpus tpu-vm create sre2l"),
    ("launch/gpu_slurm.sbatch", ["--config=configs/imagenet.py:recover", "--workdir=/w"], "GPU processes"),
])
def test_dry_run_prints_the_plan_and_runs_nothing(script, args, expect):
    out = subprocess.run(["bash", os.path.join(REPO, script), "--dry-run", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout


def test_local_cluster_tears_down_and_restarts_a_failed_job(tmp_path, tiny_teacher):
    """Both processes SIGKILL themselves after their 2nd checkpoint; MAX_RESTARTS=1 restarts the
    job, which resumes from the Orbax checkpoint (one save left, so no second kill) and finishes."""
    import sys

    from helpers import free_port

    env = {**os.environ, "MAX_RESTARTS": "1", "SRE2L_FAULT_KILL_AFTER_SAVES": "2", "PORT": str(free_port()),
           "PYTHON": sys.executable, "DEVICES_PER_PROCESS": "2"}
    out = subprocess.run(
        ["bash", "launch/local_cluster.sh", "2",
         f"--config=tests/tiny_config.py:recover,teacher={tiny_teacher[2]},batch_size=4,iterations=12",
         f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(open(tmp_path / "logs" / f"process_{i}.log").read() for i in range(2))
    assert out.returncode == 0, out.stderr + logs[-3000:]
    assert "restarting all 2 processes" in out.stderr and "all 2 processes finished" in out.stdout
    assert "resumed batches" in logs
    import json

    manifest = json.load(open(tmp_path / "recover" / "manifest.json"))
    assert len(manifest["images"]) == 16


def test_url_workdir_is_refused_with_the_gcsfuse_hint():
    import sys

    pod = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry-run", "--config=configs/imagenet.py:recover",
                          "--workdir=gs://b/w"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert pod.returncode == 2 and "GCS_BUCKET" in pod.stderr
    main = subprocess.run([sys.executable, "-m", "sre2l_jax.main",
                           "--config=configs/fashion_mnist.py:recover", "--workdir=gs://b/w"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert main.returncode != 0 and "gcsfuse" in main.stderr
    assert not os.path.exists(os.path.join(REPO, "gs:"))

"""The 1000-class ImageNet dry run at a small size: 2 processes × 4 simulated devices, every stage."""

import json
import os
import subprocess
import sys

from helpers import REPO


def test_imagenet_shaped_dry_run_over_two_processes(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "imagenet_dryrun.py"),
                          f"--out={tmp_path}", "--size=32", "--width=8", "--squeeze-steps=1"],
                         cwd=REPO, capture_output=True, text=True, timeout=1500,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    result = json.load(open(tmp_path / "dryrun.json"))
    # 1000 classes × IPC 2 in 20 batches of 100 (100 classes × 1 image) over 8 devices: 3 rounds,
    # 12 batches on the first host's devices, 8 on the second's.
    assert result["class_folders"] == 1000 and result["images"] == 2000
    assert result["written_per_host"] == [1200, 800]
    assert set(result["stages"]) == {"squeeze", "recover", "relabel", "validate"}
    assert all(len(s["peak_rss_mib"]) == 2 and min(s["peak_rss_mib"]) > 0 for s in result["stages"].values())
    assert 0 < result["label_bytes_per_image_epoch"] < 1000 * 2  # top-10, not 1000 fp16 logits

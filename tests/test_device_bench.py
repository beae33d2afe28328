"""The device benchmark script runs end to end in its tiny CPU mode, so it is known to work before a
GPU is ever lent (the real run: `python benchmarks/device_bench.py --out=DIR` on the device)."""

import json
import os
import subprocess
import sys

from helpers import REPO


def test_device_bench_tiny_mode_writes_the_table(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "device_bench.py"), "--tiny",
                          f"--out={tmp_path}", "--budget=900"], cwd=REPO, capture_output=True, text=True,
                         timeout=1500, env={**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    md = open(tmp_path / "RESULTS_gpu.md").read()
    doc = json.load(open(tmp_path / "device_bench.json"))
    rows = doc["results"]["recovery"]
    assert [(r["arch"], r["dtype"]) for r in rows] == [("resnet18", "float32"), ("resnet18", "bfloat16"),
                                                       ("resnet50", "float32"), ("resnet50", "bfloat16")]
    for r in rows:  # every case measured, none errored
        assert r["jax"]["ms_per_iter"] > 0 and r["torch"]["ms_per_iter"] > 0, r
    assert doc["results"]["student"]["jax"]["ms_per_step"] > 0
    assert all(d["result"]["repeat_max_abs_diff"] == 0.0 for d in doc["results"]["determinism"])
    assert set(doc["results"]["runlocal"]["stages"]) == {"squeeze", "recover", "validate"}
    assert "| resnet50 | bfloat16 |" in md and "`:all,runlocal` on the device:" in md

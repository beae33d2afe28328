"""Progress on stdout, plottable metrics in `<stage dir>/metrics.jsonl` and in TensorBoard.

Every record goes to the JSONL file and, as scalars, to TensorBoard event files in
`<workdir>/tensorboard/<stage>/` (tensorboardX's writer; `tensorboard --logdir <workdir>/tensorboard`
shows every stage). The progress line with rate and ETA is printed at most every
`PRINT_EVERY_SECONDS`, and always for the first and the last step and for evaluations.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

from sre2l_jax.stage_state import write_text_atomic


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


PRINT_EVERY_SECONDS = 10.0


class MetricsLog:
    """Appends one JSON object per record; only process 0 writes, so multi-host logs are not duplicated."""

    def __init__(self, directory: str, name: str = "metrics.jsonl", total_steps: int = 0,
                 stage: str = ""):
        self.path = os.path.join(directory, name)
        self.total = total_steps
        self.stage = stage
        self._t0 = time.time()
        self._s0: int | None = None
        self._printed = -math.inf
        self._writer = jax.process_index() == 0
        self._tb = None
        if self._writer:
            os.makedirs(directory, exist_ok=True)
            from tensorboardX import SummaryWriter

            logdir = os.path.join(os.path.dirname(os.path.abspath(directory)), "tensorboard", stage or "run")
            self._tb = SummaryWriter(logdir, flush_secs=10)

    def rewind(self, step: int) -> None:
        """Drop records after `step` (a resumed run redoes them), so each step is logged once."""
        if not self._writer or not os.path.exists(self.path):
            return
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, **values) -> None:
        values = {k: float(v) if hasattr(v, "__float__") else v for k, v in values.items()}
        for k, v in values.items():
            if isinstance(v, float) and math.isnan(v):
                raise FloatingPointError(f"{self.stage}: {k} is NaN at step {step}")
        if self._s0 is None:
            self._s0, self._t0 = step, time.time()
        if not self._writer:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        prefix = f"{values['run']}/" if isinstance(values.get("run"), str) else ""
        for k, v in values.items():
            if isinstance(v, float):
                self._tb.add_scalar(f"{self.stage}/{prefix}{k}", v, step)
        now = time.time()
        if (now - self._printed >= PRINT_EVERY_SECONDS or step == self._s0 or step >= self.total
                or any(k.startswith("eval") for k in values)):
            self._printed = now
            print(self.progress_line(step, values), flush=True)

    def image(self, tag: str, image, step: int = 0) -> None:
        """An HWC uint8 image (e.g. the recovered set as a grid) in TensorBoard."""
        if self._writer:
            self._tb.add_image(f"{self.stage}/{tag}", image, step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def progress_line(self, step: int, values: dict) -> str:
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in values.items())
        line = f"[{self.stage}] step {step}" + (f"/{self.total}" if self.total else "") + f" {shown}"
        done = step - (self._s0 or 0)
        if self.total and done > 0:
            rate = done / max(time.time() - self._t0, 1e-9)
            line += f" | {rate:.2f} steps/s ETA {_fmt_seconds((self.total - step) / rate)}"
        return line


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1) over seeds; std 0 for one seed (`mean_std_text` says "1 seed")."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_std_text(mean: float, std: float, n: int) -> str:
    """`53.87 ± 1.20` over several seeds, `53.87 (1 seed)` for one: never a fake ± 0.00."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f} (1 seed)"


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

"""DD-Ranking's label-robust metrics (Li et al. 2025, arXiv 2505.13300; NUS-HPC-AI-Lab/DD-Ranking).

From top-1 accuracies under one student recipe:
    HLR (hard-label recovery)     = acc(full train set, hard labels) − acc(distilled set, hard labels)
    IOR (improvement over random) = acc(distilled set, soft labels) − acc(random real subset, soft)
    LRS (label-robust score)      = (e^α − e^−1) / (e − e^−1),  α = λ·IOR − (1 − λ)·HLR,  λ = 0.5
HLR and IOR are reported in percentage points. DD-Ranking's code feeds percentages into exp(), which
makes LRS unbounded although its documentation says it lies in [0, 1]; here α uses fractions
(points / 100), so LRS ∈ [0, 1] as documented. Lower HLR and higher IOR are better.
"""

from __future__ import annotations

import math

LAMBDA = 0.5


def label_robust_score(hlr: float, ior: float, lam: float = LAMBDA) -> float:
    alpha = (lam * ior - (1.0 - lam) * hlr) / 100.0
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def metrics(soft: float, random_soft: float, hard: float | None = None,
            full_hard: float | None = None, lam: float = LAMBDA) -> dict:
    """IOR always; HLR and LRS when the hard-label accuracies are known (percent in, points out)."""
    out = {"ior": soft - random_soft, "lambda": lam}
    if hard is not None and full_hard is not None:
        out["hlr"] = full_hard - hard
        out["lrs"] = label_robust_score(out["hlr"], out["ior"], lam)
        out["full_data_top1"] = full_hard
    return out

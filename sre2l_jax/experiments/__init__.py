"""Experiment drivers built on the stages: the paper's Table 3 (`ablation`), later methods (`variants`)."""

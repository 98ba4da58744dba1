"""Evaluation: the paper's comparison on the mini-world (metrics, runner, report)."""

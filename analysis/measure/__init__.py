"""Measurement that runs inside a trial: torch (and numpy) only.

Collapse statistics (`collapse`), few-shot episodes and classifiers (`fewshot`), error bounds.
Nothing here reads MLflow or imports `analysis.crosstrial`, `study` or `trainables`.
"""

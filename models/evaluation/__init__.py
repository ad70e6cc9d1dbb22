"""Evaluation: ranking metrics and the protocols of EVALUATION.md."""

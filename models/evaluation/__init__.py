"""Evaluation: ranking metrics and the protocols of EVALUATION.md (LOO-99, full ranking, cold start).

The protocols rank with any ``protocols.Ranker``; they never import the models they measure.
"""

"""Privacy of the learning core: attribute-inference attackers on shared deltas, and the leakage-aware local
objective (a probe and its proximal step) with the local quality score behind personality-aware aggregation.
"""

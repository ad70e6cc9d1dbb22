"""Federations simulated over the real protocol: the in-process aggregator of real agent clients against a real
coordinator (``aggregator``), and the personality-leakage audit (``federation``, ``views``, ``audit``).
"""

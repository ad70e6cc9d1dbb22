"""Federations simulated over the real protocol: the in-process aggregator of agent clients, and the audit."""

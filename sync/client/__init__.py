"""The agent's side of a sync: its identity (``identity``), one round over HTTP (``http_client``), one whole sync
in one call (``run``) and the egress ledger interface (``ledger``). Never imports the coordinator.
"""

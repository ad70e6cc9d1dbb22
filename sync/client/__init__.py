"""The agent's side of a sync: the HTTP client and the egress ledger interface."""

"""The profile store: the SQLite database, adapter files, the egress ledger, encryption at rest."""

"""The profile store: the SQLite database and its migrations, records, adapter files with checksums, the profile's
files and their reset, the egress ledger and encryption at rest. :class:`agent.store.profile_store.ProfileStore` is
the face the engine, the CLI and the TUI use."""

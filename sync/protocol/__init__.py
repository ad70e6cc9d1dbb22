"""The protocol, shared by agent and coordinator: wire format, Shamir, masking, secure aggregation, privacy."""

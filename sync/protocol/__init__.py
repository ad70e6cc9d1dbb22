"""The protocol both sides share: wire format and signed messages, Shamir sharing, masks and quantization, secure
aggregation, clipping + noise + privacy accounting, and ``rules`` — the one owner of the round rules and the
sync defaults. Imports neither the client nor the coordinator.
"""

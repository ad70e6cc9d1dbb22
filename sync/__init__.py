"""Federation, headless: wire protocol, secure aggregation, clipping + noise + privacy accounting, the agent-side
sync client and the coordinator service. Depends on ``models`` only; never on ``agent`` or any UI library.
"""

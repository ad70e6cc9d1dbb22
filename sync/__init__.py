"""Federation, headless: ``protocol/`` (wire format, Shamir, masking, secure aggregation, privacy and the round
rules), ``client/`` (the agent's side), ``coordinator/`` (the service, its state and CLI) and ``simulation/``
(federations run in one process). Depends on ``models`` only; never on ``agent`` or any UI library.
"""

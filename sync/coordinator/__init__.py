"""The coordinator service: its settings (``config``), SQLite state (``state``), round state machine (``rounds``),
published versions (``publishing``) and the bootstrap version 0 (``bootstrap``), the facade the ASGI app calls
(``service``, ``app``, ``openapi``, ``rejection``), the operator's command (``cli``) and a coordinator on this machine
(``local``).
"""

"""The coordinator service: round logic and its SQLite state (:mod:`.service`), the ASGI app (:mod:`.app`)."""

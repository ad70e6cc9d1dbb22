"""The ``agent`` command line: typer commands over the engine."""

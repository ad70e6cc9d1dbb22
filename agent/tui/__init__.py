"""The Textual TUI of the agent (``agent`` with no command)."""

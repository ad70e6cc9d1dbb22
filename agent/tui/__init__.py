"""The Textual TUI of the agent (``agent`` with no command).

``app`` holds :class:`PersonaApp`, which owns the store and the profile and wires the screens to the engine;
``screens`` has one module per screen (and the small modals); ``messages`` has what screens post to the app;
``bars`` draws bar charts as text (the Profile screen's tag lifts, the Sync screen's bytes per round).
"""

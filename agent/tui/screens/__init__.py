"""The TUI's screens, one module per screen: suggestions, why, onboarding, profile, sync, loading, and the modals.

A screen is given the profile it shows and posts :mod:`agent.tui.messages` for the app to act on; it never
imports the app.
"""

"""The learning core of Persona, headless.

Data sets and catalogs, the item text encoder, the first-stage scorer with its shared/private parameter split,
federated training, metrics and evaluation protocols. Never imports ``sync``, ``agent`` or any UI library.
"""

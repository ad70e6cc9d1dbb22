"""The headless engine of the app: the profile (catalogs, suggestions, explanations, personality, item lookup), the
language-model rerank, import, the private LoRA, the training worker and its jobs, sync, audit and demo. It never
imports typer, textual or rich: the CLI and the TUI are built on it."""

"""The headless engine of the app: profile, rerank, import, private LoRA, training worker, sync. No UI imports."""

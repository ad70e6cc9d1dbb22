"""The foundation model: assets, prompts, LoRA adapters, llama.cpp serving, the torch model, blending."""

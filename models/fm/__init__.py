"""The foundation model (second stage): its files (assets), prompts, LoRA adapters and their training, llama.cpp
serving, the torch model for training, one scoring helper, the blend with the first stage and its measured weight.

Only ``torch_model`` imports torch; every other module here is torch-free (the suggest path imports them).
"""

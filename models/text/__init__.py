"""Item text: the MiniLM encoder (onnxruntime, torch-free) with its embedding cache, and its setup-time ONNX
export (torch, only under ``python -m models.prepare``).
"""

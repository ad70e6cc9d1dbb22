"""The learning core of Persona, headless: never imports ``sync``, ``agent`` or any UI library.

data/ — catalogs, interaction logs and their import from files, MovieLens-100K, the LOO-99 split
text/ — the MiniLM item encoder (onnxruntime) with its embedding cache, and its setup-time ONNX export
firststage/ — the numpy scorer, its training in torch, federated rounds, the recipe every agent runs
fm/ — the foundation model: assets, prompts, LoRA, llama.cpp serving, torch training, scoring, blending
evaluation/ — ranking metrics and the protocols over a small ``Ranker`` interface
privacy/ — attribute-inference attackers and the leakage-aware objective
experiments/ — the ``agent eval`` harness, the whole-system evaluation and the benchmarks
Shared modules: ``types`` (array and progress types), ``errors``, ``assets`` (files, checksums, atomic writes),
``prepare`` (``python -m models.prepare``).
"""

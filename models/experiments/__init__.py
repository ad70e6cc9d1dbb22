"""End-to-end experiments: the ``agent eval`` harness (``evaluate``), the whole-system evaluation and the
benchmarks behind scripts/bench_*.py. They may import every other part of ``models``; nothing imports them
except the CLI and scripts.
"""

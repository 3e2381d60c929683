"""Benchmarks of the data pipeline and training loop against the public sample they replace (README "Performance").

    make bench            # = python -m bench (bench/__main__.py): figures to bench/results/
    python -m bench.gpu OUT_DIR     # the GPU run (bench/gpu.py), where CUDA is available
"""

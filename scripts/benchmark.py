"""The environment as a benchmark for agents.

The same program as the ``crystal-rl-benchmark`` command (code: ``crystal_rl/benchmark.py``).
"""

from crystal_rl.benchmark import main

if __name__ == "__main__":
    main()

"""Compare two evaluations with bootstrap confidence intervals: ``python scripts/compare.py
eval_base/ eval_grpo/``.

The same program as the ``crystal-rl-compare`` command (code: ``crystal_rl/compare.py``).
"""

from crystal_rl.compare import main

if __name__ == "__main__":
    main()

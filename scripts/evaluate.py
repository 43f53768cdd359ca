"""Evaluate generated crystals: ``python scripts/evaluate.py samples/ --seed 0 --out eval/``.

The same program as the ``crystal-rl-evaluate`` command (code: ``crystal_rl/evaluate.py``).
"""

from crystal_rl.evaluate import main

if __name__ == "__main__":
    main()

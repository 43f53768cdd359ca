"""Sample crystals: ``python scripts/sample.py --model mp20_tiny --num 100 --seed 0 --out samples/``.

The same program as the ``crystal-rl-sample`` command (code: ``crystal_rl/sample.py``).
"""

from crystal_rl.sample import main

if __name__ == "__main__":
    main()

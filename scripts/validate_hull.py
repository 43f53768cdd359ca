"""Check the default hull against known answers: ``python scripts/validate_hull.py --out docs/hull_validation.json``.

The same program as the ``crystal-rl-validate-hull`` command (code: ``crystal_rl/validate_hull.py``).
"""

from crystal_rl.validate_hull import main

if __name__ == "__main__":
    main()

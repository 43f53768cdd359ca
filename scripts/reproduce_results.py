"""Reproduce the README's result tables (``--tiny``: a quick check of the pipeline).

The same program as the ``crystal-rl-reproduce`` command (code: ``crystal_rl/reproduce.py``).
"""

from crystal_rl.reproduce import main

if __name__ == "__main__":
    main()

"""Interpolate a fine-tuned model with its base: ``python scripts/interpolate.py --base perov5_tiny
--tuned runs/x/model_best.pt --weight 0.75 --out merged.pt``.

The same program as the ``crystal-rl-interpolate`` command (code: ``crystal_rl/interpolate.py``).
"""

from crystal_rl.interpolate import main

if __name__ == "__main__":
    main()

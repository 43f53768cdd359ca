"""RL fine-tuning: ``python scripts/train.py env=ldm_mp20 reward=dng [agent=grpo] [key=value ...]``.

The same program as the ``crystal-rl-train`` command (code: ``crystal_rl/train.py``).
"""

from crystal_rl.train import main

if __name__ == "__main__":
    main()

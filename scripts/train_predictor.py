"""Train a property predictor on frozen VAE latents.

The same program as the ``crystal-rl-train-predictor`` command (code: ``crystal_rl/train_predictor.py``).
"""

from crystal_rl.train_predictor import main

if __name__ == "__main__":
    main()

"""Pretrain the crystal VAE.

The same program as the ``crystal-rl-pretrain-vae`` command (code: ``crystal_rl/pretrain_vae.py``).
"""

from crystal_rl.pretrain_vae import main

if __name__ == "__main__":
    main()

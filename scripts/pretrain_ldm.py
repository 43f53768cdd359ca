"""Pretrain the latent diffusion model.

The same program as the ``crystal-rl-pretrain-ldm`` command (code: ``crystal_rl/pretrain_ldm.py``).
"""

from crystal_rl.pretrain_ldm import main

if __name__ == "__main__":
    main()

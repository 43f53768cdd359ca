"""crystal_rl: the wiring on top of ``crystal_env``, ``rewards`` and ``agents``.

It holds the bundled Hydra configs (``crystal_rl/configs``), their typed schemas and validation
(:mod:`crystal_rl.config`) and the command-line programs (:mod:`crystal_rl.cli`). Importing it
loads nothing heavy.
"""

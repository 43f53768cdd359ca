"""The command-line programs.

Each is installed as a console command ``crystal-rl-<name>`` (see ``[project.scripts]`` in
pyproject.toml), runs as ``crystal-rl <name> ...`` or ``python -m crystal_rl.cli <name> ...``, and in a
checkout as ``python scripts/<name with _>.py ...``; the arguments are the same everywhere. Hydra
programs (train, pretrain-vae, pretrain-ldm, train-predictor) take ``key=value`` overrides, the others
``--options`` (``--help`` lists them).
"""

from __future__ import annotations

import importlib
import sys

#: command name -> module whose ``main()`` runs it
COMMANDS = {
    "train": "crystal_rl.train",
    "sample": "crystal_rl.sample",
    "evaluate": "crystal_rl.evaluate",
    "benchmark": "crystal_rl.benchmark",
    "pretrain-vae": "crystal_rl.pretrain_vae",
    "pretrain-ldm": "crystal_rl.pretrain_ldm",
    "train-predictor": "crystal_rl.train_predictor",
    "report-pretrained": "crystal_rl.report_pretrained",
    "plot-training": "crystal_rl.plot_training",
    "reproduce": "crystal_rl.reproduce",
    "validate-hull": "crystal_rl.validate_hull",
    "interpolate": "crystal_rl.interpolate",
    "compare": "crystal_rl.compare",
}


def main(argv: list[str] | None = None) -> None:
    """``crystal-rl <command> [arguments...]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        raise SystemExit(f"usage: crystal-rl <command> [arguments...]\ncommands: {names}")
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command])
    sys.argv = [f"crystal-rl-{command}", *rest]  # Hydra programs read their overrides from sys.argv
    module.main()


if __name__ == "__main__":
    main()

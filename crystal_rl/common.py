"""Small helpers the command-line programs share: argument types, quiet third-party noise, run info."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

#: Warnings that third-party libraries repeat on the crystals this project generates, and that say
#: nothing actionable: pymatgen's Element.X for noble gases (e.g. He, reached through
#: Composition.formula), and pymatgen's CIF parser rounding coordinates it reads back.
KNOWN_NOISE = (
    (UserWarning, r"No Pauling electronegativity for "),
    (UserWarning, r"Issues encountered while parsing CIF"),
)


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence :data:`KNOWN_NOISE` and spglib's C-level "spglib: ... failed" messages (for the
    degenerate cells a model generates) inside the block; every other warning still shows."""
    previous = os.environ.get("SPGLIB_WARNING")
    os.environ["SPGLIB_WARNING"] = "OFF"  # read by spglib's C library on every message
    try:
        with warnings.catch_warnings():
            for category, message in KNOWN_NOISE:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        if previous is None:
            os.environ.pop("SPGLIB_WARNING", None)
        else:
            os.environ["SPGLIB_WARNING"] = previous


def _at_least(text: str, cast: type, minimum: float, what: str):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not value >= minimum:
        raise argparse.ArgumentTypeError(f"{value} is out of range: must be >= {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _at_least(text, int, 1, "an integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds)."""
    return _at_least(text, int, 0, "an integer")


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0 (DDIM eta)."""
    return _at_least(text, float, 0, "a number")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit(path: Path | None = None) -> str:
    """The checked-out commit (with ``-dirty`` for uncommitted changes), or ``unknown`` outside git."""
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def machine_info() -> str:
    """Operating system, architecture, CPU count, torch version and GPU, for result files."""
    import platform

    import torch

    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    )


@contextlib.contextmanager
def hydra_job_guard(started: Callable[[Path], bool] = lambda _: True) -> Iterator[Path]:
    """Inside a Hydra job: yields its output directory; if the block fails with a config error, or
    with any error while ``started(output_dir)`` is False, and the directory held only what Hydra
    wrote at start-up, remove it (a failed start leaves no empty run directory). A
    :class:`~crystal_env.config.ConfigError` exits with its one-line message instead of a traceback."""
    from hydra.core.hydra_config import HydraConfig

    from crystal_env.config import ConfigError

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    hydra_files = {".hydra", f"{hydra_cfg.job.name}.log"}
    fresh = output_dir.is_dir() and all(p.name in hydra_files for p in output_dir.iterdir())
    try:
        yield output_dir
    except BaseException as e:
        if fresh and (isinstance(e, ConfigError) or not started(output_dir)):
            shutil.rmtree(output_dir, ignore_errors=True)
        if isinstance(e, ConfigError):
            raise SystemExit(f"error: {e}") from None
        raise

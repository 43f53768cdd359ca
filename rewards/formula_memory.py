"""The recent reduced formulas a count-based reward term compares a batch with."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from typing import Any


class FormulaMemory:
    """The last ``size`` formulas added (``size=0``: none). Saved in training checkpoints."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._recent: deque[str] = deque(maxlen=self.size)

    def counts(self, formulas: Sequence[str], remember: bool = True) -> Counter[str]:
        """How often each formula occurs in ``formulas`` plus the memory; then remember them (if asked)."""
        here = set(formulas)
        counts = Counter(formulas) + Counter(f for f in self._recent if f in here)
        if remember:
            self._recent.extend(formulas)
        return counts

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self._recent)}

    def load_state_dict(self, state: dict[str, Any], owner: str) -> None:
        recent = state.get("recent")
        if not isinstance(recent, list) or not all(isinstance(f, str) for f in recent):
            raise ValueError(f"{owner}: state 'recent' must be a list of formulas, got {type(recent).__name__}")
        self._recent = deque(recent, maxlen=self.size)

"""nctune's analysis: measurement inside a trial (analysis.measure) and the study-level analysis
that reads runs (analysis.crosstrial).

For notebooks: `from analysis import load_study, correlations, leaderboard` (analysis.api).
They are imported on first use, so a trial importing analysis.measure pays nothing for them.
"""

from __future__ import annotations

from typing import Any

_API = ("analyze", "correlations", "leaderboard", "load_study")
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    """The notebook API (analysis.api), imported lazily."""
    if name in _API:
        from analysis import api

        return getattr(api, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")

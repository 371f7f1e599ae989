"""The one error type for bad user input, shared by every nctune package.

It lives in `analysis`, the bottom of the dependency graph (study -> trainables -> analysis), so
that all three packages can raise it. The CLI prints its message and exits with status 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names the field, the value and what is allowed."""

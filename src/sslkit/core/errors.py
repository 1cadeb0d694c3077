"""Errors meant for people: one line, what was wrong and what to do."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or usage. The CLI prints the message on one line and exits with code 2."""


class Interrupted(Exception):
    """Training stopped by a signal after writing a checkpoint (exit code 130)."""

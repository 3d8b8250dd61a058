"""Errors that the command line turns into exit codes: 0 done, 2 bad input, 1 failure."""

from __future__ import annotations


class BadInput(Exception):
    """Input the user can fix: the message is one line naming the file, field or module.

    The CLI prints it as ``error: <message>`` and exits with code 2. Raise it before anything is
    written, so that bad input never leaves a half-written output behind.
    """

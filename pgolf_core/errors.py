"""The one base class of errors a user can fix: the CLI prints their message as one line.

``pgolf`` prints ``pgolf: error: <message>`` for any ``PgolfError`` (and for the older error classes
listed in ``pgolf_core.cli``), no traceback; ``pgolf --debug`` shows it. A new error class that names
the file, key or value and what was expected should derive from this.
"""

from __future__ import annotations


class PgolfError(Exception):
    """A problem with the user's input or files; the message says what and how to fix it."""

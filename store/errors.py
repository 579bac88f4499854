"""User errors and the exit codes every command shares: the bottom of the house, importing nothing of ours.

Every layer's error classes subclass `UserError`, so they live here, below `store.cli` (which turns them into one line
and a code at the boundary) and below everything that raises them.

Exit codes, the same for every command:

    0    ok
    1    failed: the store could not answer (no store at that path, a SQL error, a lock held too long), or an
         unexpected error (a traceback: a bug to report)
    2    a user error: a bad flag, config, input file, model spec, task or data, or a write refused by the read-only
         store; one line on stderr, `error: <what to fix>`
    3    stopped by a budget (--max-calls, --max-cost); the same command with a higher budget goes on from there
    130  interrupted (Ctrl-C); the same command goes on from there
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A user mistake: reported as one line, `error: <message>`, with no traceback, and exit code `exit_code`.

    The message says what to fix. Subclasses keep their own names (ConfigError, InputError, StoreError, ...);
    a subclass may set `exit_code` to another code of the table (StoreError: EXIT_FAILED)."""

    exit_code = EXIT_USAGE


def exit_code(error: BaseException) -> int | None:
    """The exit code of a user error; None for anything else (a bug: let it raise)."""
    if isinstance(error, UserError):
        return error.exit_code
    return None

"""How a `parcours` command fails: one line on stderr and a non-zero exit, never a traceback.

An operator reads the line, not the stack: it names what was wrong and where (a file, a
store, an id). Commands raise `CommandError` for the failures they expect; `guarded` turns
those, and the failures any command can meet (a file that cannot be read, a store that does
not answer, Ctrl-C), into that line. Anything else is a bug: it is still one line, which
says how to see the traceback (PARCOURS_DEBUG=1).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

# sysexits.h: EX_USAGE for a command line argparse refuses, EX_SOFTWARE for a bug.
USAGE = 2
INTERNAL = 70
INTERRUPTED = 130


class CommandError(Exception):
    """An expected failure of a command; its text is the line the operator reads."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    """Write one error line: newlines inside a message would break "one line per error"."""
    line = " ".join(message.split())
    print(line if line.startswith("parcours") else f"parcours: {line}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """argparse's own usage errors, on one line too (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        say(f"{self.prog}: {message} (see `{self.prog} --help`)")
        raise SystemExit(USAGE)


def _store_problem(exc: Exception) -> str | None:
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

    if isinstance(exc, NoSuchModuleError | ArgumentError):
        return (f"the store URL is not one SQLAlchemy can open ({exc}); expected e.g. "
                "sqlite:///var/parcours.db or postgresql+psycopg://user@host/db")
    if isinstance(exc, DBAPIError):
        lines = str(exc.orig).strip().splitlines() if exc.orig else []
        first = lines[0] if lines else type(exc).__name__
        if isinstance(exc, OperationalError):
            return f"cannot use the store: {first}"
        return f"the store refused the command: {first}"
    return None


def guarded(command: Callable[[], int]) -> int:
    """Run one command; every failure becomes one stderr line and an exit code."""
    try:
        return command()
    except CommandError as exc:
        say(str(exc))
        return exc.code
    except KeyboardInterrupt:
        say("interrupted")
        return INTERRUPTED
    except OSError as exc:
        if os.environ.get("PARCOURS_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"{where}{exc.strerror or exc}")
        return 1
    except Exception as exc:
        if os.environ.get("PARCOURS_DEBUG"):
            raise
        problem = _store_problem(exc)
        if problem:
            say(problem)
            return 1
        say(f"internal error: {type(exc).__name__}: {exc} "
            "(run again with PARCOURS_DEBUG=1 for the traceback)")
        return INTERNAL

"""Errors the command line reports, each with the exit status it ends with.

Exit statuses: 0 success, 1 the request or the service failed (or the binding `--wait` waited
for is in ERROR), 2 bad input found before any request: usage, settings, no token (or a data
directory another `cthm serve` holds), 3 the server cannot be reached, 4 `--wait` timed out.
"""

from __future__ import annotations

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4


class ServiceError(Exception):
    """`cthm serve` could not start; the message is one line for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServiceSettingError(ServiceError):
    """A setting passed validation but cannot be used (e.g. a database URL of no known kind)."""


class DataDirInUse(ServiceError):
    """Another process holds the data directory's lock: two servers must never share one."""


class Failure(click.ClickException):
    """A failure shown as one `Error: ...` line; the class decides the exit status."""

    exit_code = EXIT_FAILURE


class SettingsFailure(Failure):
    """Bad flags, environment or config file: a usage error, but one line without usage text."""

    exit_code = EXIT_USAGE


class UnreachableFailure(Failure):
    exit_code = EXIT_UNREACHABLE


class TimedOutFailure(Failure):
    """`--wait` gave up: the request was done, its effect not seen in time."""

    exit_code = EXIT_TIMEOUT

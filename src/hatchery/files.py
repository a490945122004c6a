"""Hatchery's files (repositories, mirrors, backups, checkouts) are the service user's
alone: any other local user could otherwise read every project's code and data."""

import contextlib
import ctypes
import os
from pathlib import Path

PR_SET_DUMPABLE = 4


def make_private(*directories: Path) -> None:
    """Everything this process creates from now on is 0600/0700, these directories too."""
    os.umask(0o077)
    for directory in directories:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)


def undumpable() -> None:
    """Processes of the same user (a project's migration, when Hatchery does not run as
    root) may not read this one's memory or /proc/<pid>/environ, its secrets."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_DUMPABLE, 0)

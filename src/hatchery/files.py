"""Hatchery's files (repositories, mirrors, backups, checkouts) are the service user's
alone: any other local user could otherwise read every project's code and data."""

import os
from pathlib import Path


def make_private(*directories: Path) -> None:
    """Everything this process creates from now on is 0600/0700, these directories too."""
    os.umask(0o077)
    for directory in directories:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)

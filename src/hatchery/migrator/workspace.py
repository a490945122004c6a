"""A run's scratch: the project's files at one commit, exported once and shared by every
step of the run, beside the HOME and TMPDIR of the processes that run its code. Owned by
the sandbox's user; removed when the run ends."""

import asyncio
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from hatchery import git
from hatchery.config import Settings
from hatchery.failures import Failure
from hatchery.migrator.sandbox import Sandbox

EXPORTED = ".exported"


class NoAlembicConfig(Failure):
    pass


@dataclass(frozen=True)
class Workspace:
    path: Path
    commit: str

    @property
    def checkout(self) -> Path:
        return self.path / "checkout"

    @property
    def home(self) -> Path:
        return self.path / "home"


def prepare(settings: Settings) -> None:
    """The directories the sandbox's user walks through, but may not list."""
    root = settings.migrations_dir.resolve()
    for directory in (root, root / "venvs", root / "runs"):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o711)


async def open_workspace(
    settings: Settings, sandbox: Sandbox, key: str, repository: Path, commit: str
) -> Workspace:
    """The workspace `key` with the files of `commit`; exported now unless it already was
    (by an earlier step of the run)."""
    workspace = Workspace(settings.migrations_dir.resolve() / "runs" / key, commit)
    marker = workspace.path / EXPORTED
    if not marker.exists() or marker.read_text() != commit:
        shutil.rmtree(workspace.path, ignore_errors=True)
        workspace.path.mkdir(parents=True)
        workspace.path.chmod(0o711)  # mkdir's mode passes through the umask
        await git.export(repository, commit, workspace.checkout)
        # The project's code may read its files, never change them (nor what a later
        # step of the run will read); its HOME is the one place it writes.
        await asyncio.to_thread(read_only, workspace.checkout)
        workspace.home.mkdir(mode=0o700)
        sandbox.own(workspace.home)
        marker.write_text(commit)
    return workspace


def read_only(tree: Path) -> None:
    """Readable by anyone, writable by no one but root (who owns it)."""
    for place in (tree, *tree.rglob("*")):
        if place.is_symlink():
            continue
        mode = place.stat().st_mode
        executable = place.is_dir() or mode & stat.S_IXUSR
        place.chmod(0o755 if executable else 0o644)


def remove(settings: Settings, key: str) -> None:
    shutil.rmtree(settings.migrations_dir.resolve() / "runs" / key, ignore_errors=True)


def find_alembic_ini(tree: Path, configured: str | None = None) -> str:
    """The repository's alembic.ini, relative to its root: where the project says, or the
    only one there is."""
    if configured:
        try:
            path = (tree / configured).resolve()
            there = path.is_file() and path.is_relative_to(tree.resolve())
        except OSError:  # a name too long, a loop of links: not a file either
            there = False
        if not there:
            raise NoAlembicConfig(f"no alembic.ini at {configured} in the repository")
        return str(path.relative_to(tree.resolve()))
    candidates = sorted(p for p in tree.rglob("alembic.ini") if ".git" not in p.parts)
    if len(candidates) != 1:
        found = ", ".join(str(p.relative_to(tree)) for p in candidates) or "none"
        raise NoAlembicConfig(f"expected one alembic.ini in the repository, found {found}")
    return str(candidates[0].relative_to(tree))

"""The git operations Hatchery needs, through the real `git` command."""

import asyncio
import io
import os
import tarfile
from pathlib import Path

AUTHOR = ["-c", "user.name=Hatchery", "-c", "user.email=hatchery@localhost"]


class GitError(RuntimeError):
    pass


async def git(*args: str, cwd: Path | None = None, stdout_bytes: bool = False) -> str | bytes:
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise GitError(f"git {args[0]} failed: {err.decode(errors='replace').strip()}")
    return out if stdout_bytes else out.decode().strip()


async def init_bare(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    await git("init", "--quiet", "--bare", "--initial-branch=main", str(path))


async def head_commit(repository: Path, ref: str = "main") -> str | None:
    try:
        commit = await git(
            "--git-dir", str(repository), "rev-parse", "--verify", f"{ref}^{{commit}}"
        )
    except GitError:
        return None
    assert isinstance(commit, str)
    return commit


async def commit_tree_and_push(work_tree: Path, repository: Path, message: str) -> str:
    await git("init", "--quiet", "--initial-branch=main", cwd=work_tree)
    await git("add", "--all", cwd=work_tree)
    await git(*AUTHOR, "commit", "--quiet", "-m", message, cwd=work_tree)
    await git("push", "--quiet", str(repository), "main", cwd=work_tree)
    commit = await git("rev-parse", "HEAD", cwd=work_tree)
    assert isinstance(commit, str)
    return commit


async def export(repository: Path, ref: str, destination: Path) -> None:
    """Write the files of `ref` into `destination`, exactly as committed."""
    archive = await git(
        "--git-dir", str(repository), "archive", "--format=tar", ref, stdout_bytes=True
    )
    assert isinstance(archive, bytes)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")

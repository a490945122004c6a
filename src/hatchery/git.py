"""The git operations Hatchery needs, through the real `git` command.

A repository URL, a branch or a commit may come from whoever holds a `projects:write`
key, so git is never handed one as an option: URLs are allowed by scheme, every URL and
ref follows `--` or `--end-of-options`, and git runs with a protocol allow-list, no
inherited environment or configuration (no credential helpers, no prompts), a timeout,
and its whole process group killed when that runs out.
"""

import asyncio
import contextlib
import io
import os
import re
import signal
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

from hatchery import redaction
from hatchery.failures import Failure

AUTHOR = ["-c", "user.name=Hatchery", "-c", "user.email=hatchery@localhost"]
DEFAULT_TIMEOUT_SECONDS = 300.0
STDERR_LIMIT = 2000

_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
# scp-like ssh: user@host:path, the form `git clone git@github.com:team/repo.git` takes.
_SCP = re.compile(rf"^[A-Za-z0-9._-]+@{_HOST}:(?![-/])[^\s]+$")
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f]")
_BRANCH = re.compile(r"[A-Za-z0-9._/-]+")


class GitError(Failure):
    pass


class UnsafeRepository(ValueError):
    """A repository URL Hatchery will not hand to git; the message says why."""


def check_url(url: str, file_root: Path | None, forbidden: list[Path]) -> str:
    """The URL, if it is one git may fetch: https or ssh with a host, or file:// under
    `file_root` (resolved, symlinks followed) and outside every `forbidden` directory."""
    if _UNSAFE_CHARACTERS.search(url) or url.startswith("-"):
        raise UnsafeRepository("a repository URL has no spaces, control characters or leading '-'")
    if _SCP.match(url):
        return url
    parts = urlsplit(url)
    if parts.scheme in ("https", "ssh"):
        if not parts.hostname or not re.fullmatch(_HOST, parts.hostname):
            raise UnsafeRepository(f"a {parts.scheme} URL needs a host name")
        return url
    if parts.scheme == "file":
        if file_root is None:
            raise UnsafeRepository("file:// repositories are not enabled on this server")
        path = Path(parts.path).resolve()
        if parts.netloc not in ("", "localhost") or not path.is_relative_to(file_root.resolve()):
            raise UnsafeRepository(f"file:// repositories must be under {file_root}")
        if any(path.is_relative_to(d.resolve()) for d in forbidden):
            raise UnsafeRepository("that directory belongs to Hatchery")
        return url
    raise UnsafeRepository("use an https://, ssh:// or user@host:path URL")


def check_branch(name: str) -> str:
    """A branch name as `git check-ref-format --branch` takes it, and never an option."""
    if (
        not _BRANCH.fullmatch(name)
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "//" in name
    ):
        raise ValueError("not a branch name (letters, digits, '.', '_', '-' and '/')")
    return name


def _environment(allow_file: bool) -> dict[str, str]:
    """Nothing of Hatchery's own environment (database URLs, keys) reaches git or what it
    runs; no system or global configuration; no prompt for a password."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "GIT_ALLOW_PROTOCOL": "https:ssh:file" if allow_file else "https:ssh",
    }


async def git(
    *args: str,
    cwd: Path | None = None,
    stdout_bytes: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    allow_file: bool = True,
    secrets: tuple[str, ...] = (),
) -> str | bytes:
    """Run git; its stderr, should it fail, is redacted of `secrets` and of credentials."""
    process = await asyncio.create_subprocess_exec(
        "git",
        "-c", "credential.helper=",
        "-c", "core.hooksPath=/dev/null",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_environment(allow_file),
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(process)
        await process.wait()
        if isinstance(exc, TimeoutError):
            raise GitError(f"git {args[-1] if args else ''} took over {timeout:g} s") from None
        raise
    if process.returncode != 0:
        message = redaction.redact(err.decode(errors="replace").strip(), secrets)
        raise GitError(f"git failed: {message[-STDERR_LIMIT:]}")
    return out if stdout_bytes else out.decode().strip()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


async def init_bare(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    await git("init", "--quiet", "--bare", "--initial-branch=main", "--", str(path))


async def fetch(mirror: Path, url: str, timeout: float, allow_file: bool) -> None:
    """Bring a bare mirror's branches up to date with `url` (already checked)."""
    await git(
        "--git-dir", str(mirror), "fetch", "--quiet", "--prune", "--no-tags", "--",
        url, "+refs/heads/*:refs/heads/*",
        timeout=timeout, allow_file=allow_file, secrets=(url,),
    )  # fmt: skip


async def head_commit(repository: Path, ref: str = "main") -> str | None:
    try:
        commit = await git(
            "--git-dir", str(repository), "rev-parse", "--verify", "--quiet",
            "--end-of-options", f"{ref}^{{commit}}",
        )  # fmt: skip
    except GitError:
        return None
    assert isinstance(commit, str)
    return commit or None


async def commit_tree_and_push(work_tree: Path, repository: Path, message: str) -> str:
    await git("init", "--quiet", "--initial-branch=main", cwd=work_tree)
    await git("add", "--all", cwd=work_tree)
    await git(*AUTHOR, "commit", "--quiet", "-m", message, cwd=work_tree)
    await git("push", "--quiet", "--", str(repository), "main", cwd=work_tree)
    commit = await git("rev-parse", "HEAD", cwd=work_tree)
    assert isinstance(commit, str)
    return commit


async def export(repository: Path, commit: str, destination: Path) -> None:
    """Write the files of `commit` (a full id, as `head_commit` returns) into
    `destination`, exactly as committed."""
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise GitError(f"not a commit id: {commit[:80]!r}")
    archive = await git(
        "--git-dir", str(repository), "archive", "--format=tar", commit, stdout_bytes=True
    )
    assert isinstance(archive, bytes)
    await asyncio.to_thread(_extract, archive, destination)


def _extract(archive: bytes, destination: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")

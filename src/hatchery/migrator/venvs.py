"""A project's migrations run in the project's own Python dependencies: a virtualenv per
project and dependency lock, built with uv from what the project declares, kept and
reused until the lock changes, and pruned when it is no longer the newest.

What a project declares is read, never run, here; uv builds run in the sandbox, and
Hatchery's own pins never constrain a project's.
"""

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from uv import find_uv_bin

from hatchery import redaction
from hatchery.config import Settings
from hatchery.failures import Failure
from hatchery.migrator.sandbox import Sandbox, SandboxTimeout

READY = ".ready"
OUTPUT_TAIL = 30
SYSTEM_PYTHONS = (Path("/usr/local/bin/python3.11"), Path("/usr/bin/python3.11"))
# How this machine reaches package indexes (its CA bundle, proxies, a mirror): passed on
# to uv, and nothing else of Hatchery's environment.
NETWORK = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "UV_INDEX_URL", "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL", "UV_INDEX", "UV_NATIVE_TLS", "UV_OFFLINE",
)  # fmt: skip


class EnvironmentFailed(Failure):
    """The project's environment could not be made; the message names what and why."""


@dataclass(frozen=True)
class Declared:
    """What the project's migrations need: where it is declared, and its digest."""

    kind: str  # "requirements" (set on the project), "uv.lock", "requirements.txt", ...
    directory: Path | None
    requirements: tuple[str, ...]
    digest: str


def declared(checkout: Path, ini_dir: Path, explicit: list[str] | None, python: str) -> Declared:
    """The project's declaration of its dependencies: the explicit list set on the
    project, else the first found beside alembic.ini, else at the repository's root."""
    if explicit:
        return Declared("requirements", None, tuple(explicit), _digest(python, explicit))
    for directory in dict.fromkeys((ini_dir, checkout)):
        for kind in _kinds(directory):
            path = directory / kind
            if kind == "uv.lock":
                texts = [path.read_text(), (directory / "pyproject.toml").read_text()]
            else:
                texts = [path.read_text()]
            requirements = _converted(path) if kind.startswith("Pipfile") else ()
            return Declared(kind, directory, requirements, _digest(python, [kind, *texts]))
    raise EnvironmentFailed(
        "the repository declares no Python dependencies beside alembic.ini or at its root "
        "(uv.lock, requirements.txt, pyproject.toml, Pipfile.lock or Pipfile): declare them, "
        "or set the project's migration requirements"
    )


def _kinds(directory: Path) -> list[str]:
    found = []
    if (directory / "uv.lock").is_file() and (directory / "pyproject.toml").is_file():
        found.append("uv.lock")
    if (directory / "requirements.txt").is_file():
        found.append("requirements.txt")
    found += sorted(p.name for p in directory.glob("requirements*.txt") if p.is_file())
    for name in ("pyproject.toml", "Pipfile.lock", "Pipfile"):
        if (directory / name).is_file():
            found.append(name)
    return list(dict.fromkeys(found))


def _digest(python: str, parts: list[str]) -> str:
    return hashlib.sha256(json.dumps([python, *parts]).encode()).hexdigest()


def _converted(path: Path) -> tuple[str, ...]:
    """A Pipfile's or Pipfile.lock's default packages, as requirements."""
    if path.name == "Pipfile.lock":
        packages = json.loads(path.read_text()).get("default", {})
        return tuple(
            f"{name}{spec.get('version', '')}"
            + (f"; {spec['markers']}" if spec.get("markers") else "")
            for name, spec in packages.items()
            if isinstance(spec, dict) and "version" in spec
        )
    packages = tomllib.loads(path.read_text()).get("packages", {})
    return tuple(
        name if version in ("*", "") else f"{name}{version}"
        for name, version in packages.items()
        if isinstance(version, str)
    )


def check_python(found: Declared, version: str) -> None:
    """Fail early, naming `requires-python`, when the project needs another Python."""
    if found.directory is None:
        return
    spec = None
    pyproject = found.directory / "pyproject.toml"
    if pyproject.is_file():
        spec = tomllib.loads(pyproject.read_text()).get("project", {}).get("requires-python")
    if spec is None and (found.directory / "uv.lock").is_file():
        found_spec = re.search(
            r'^requires-python = "([^"]+)"', (found.directory / "uv.lock").read_text(), re.M
        )
        spec = found_spec.group(1) if found_spec else None
    try:
        allowed = SpecifierSet(spec) if spec else None
    except InvalidSpecifier:
        return
    if allowed is not None and not allowed.contains(version, prereleases=True):
        raise EnvironmentFailed(
            f"the project declares requires-python {spec!r} and this worker has Python "
            f"{version}: set the project's migration requirements (and use Hatchery's env "
            "if its env.py imports code this Python cannot run)"
        )


@dataclass
class Builder:
    settings: Settings
    sandbox: Sandbox
    on_line: Callable[[str], Awaitable[None]]

    @property
    def root(self) -> Path:
        return self.settings.migrations_dir.resolve()

    async def ensure(self, project: str, found: Declared, python: Path, scratch: Path) -> Path:
        """The project's environment for this lock: its own directory, hard links to a
        build shared by every project with the same lock. Builds are made once, whatever
        the number of workers asking, and are read-only to the code that runs in them."""
        venv = self.root / "venvs" / project / found.digest[:16]
        if (venv / READY).exists():
            (venv / READY).touch()
            await self.on_line(f"reusing the environment built from {found.kind}")
            return venv / "bin" / "python"
        seed = await self._seed(found, python, scratch)
        venv.parent.mkdir(parents=True, exist_ok=True)
        venv.parent.chmod(0o711)
        async with _locked(venv.with_name(venv.name + ".lock")):
            if not (venv / READY).exists():
                shutil.rmtree(venv, ignore_errors=True)
                await asyncio.to_thread(shutil.copytree, seed, venv, copy_function=os.link)
                (venv / READY).touch()
        self._prune(venv.parent, keep=venv)
        return venv / "bin" / "python"

    async def _seed(self, found: Declared, python: Path, scratch: Path) -> Path:
        seed = self.root / "venvs" / ".builds" / found.digest[:16]
        async with _locked(seed.with_name(seed.name + ".lock")):
            if (seed / READY).exists():
                await self.on_line(f"linking the environment already built from {found.kind}")
                return seed
            shutil.rmtree(seed, ignore_errors=True)
            seed.parent.mkdir(parents=True, exist_ok=True)
            seed.parent.chmod(0o711)
            self.sandbox.own(seed.parent, recursive=False)
            try:
                await self._build(seed, found, python, scratch)
                await asyncio.to_thread(_seal, seed)
            except BaseException:
                shutil.rmtree(seed, ignore_errors=True)
                raise
            (seed / READY).touch()
        return seed

    async def _build(self, venv: Path, found: Declared, python: Path, scratch: Path) -> None:
        uv = str(self.uv())
        cache = self.root / "uv-cache"
        cache.mkdir(exist_ok=True)
        self.sandbox.own(cache, recursive=False)  # uv works inside it as that user
        network = {name: os.environ[name] for name in NETWORK if name in os.environ}
        home = scratch / "home"
        env = self.sandbox.environment(
            home,
            [],
            {
                **network,
                "UV_CACHE_DIR": str(cache),
                "UV_PYTHON_DOWNLOADS": "never",
                "UV_NO_PROGRESS": "1",
                # Compiled now: once sealed, the environment is read-only to its users.
                "UV_COMPILE_BYTECODE": "1",
                # Copies, not links into the cache, so that sealing leaves the cache alone.
                "UV_LINK_MODE": "copy",
            },
        )
        where = found.directory or home
        await self.on_line(f"building the environment from {found.kind}")
        if found.kind == "uv.lock":
            env["UV_PROJECT_ENVIRONMENT"] = str(venv)
            await self._uv(
                [uv, "sync", "--frozen", "--no-install-workspace", "--no-dev",
                 "--python", str(python)], where, env,
            )  # fmt: skip
        else:
            await self._uv([uv, "venv", "--quiet", "--python", str(python), str(venv)], where, env)
            source = where / found.kind
            if found.requirements:
                source = home / "requirements.txt"
                source.write_text("\n".join(found.requirements) + "\n")
                self.sandbox.own(source)
            await self._uv(
                [uv, "pip", "install", "--python", str(venv / "bin" / "python"), "-r",
                 str(source)], where, env,
            )  # fmt: skip

    async def _uv(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        tail: list[str] = []

        async def line(text: str) -> None:
            tail[:] = [*tail[-OUTPUT_TAIL:], redaction.redact(text)]
            await self.on_line(text)

        try:
            code = await self.sandbox.run(argv, cwd=cwd, env=env, on_line=line)
        except SandboxTimeout as exc:
            raise EnvironmentFailed(f"building the environment {exc}") from None
        if code != 0:
            reason = "\n".join(t for t in tail if t.strip())[-2000:]
            raise EnvironmentFailed(f"uv could not build the environment:\n{reason}")

    def uv(self) -> Path:
        """uv, where the sandbox's user can run it."""
        found = Path(find_uv_bin())
        if self.sandbox.reachable(found):
            return found
        copy = self.root / "bin" / "uv"
        if not copy.exists() or copy.stat().st_size != found.stat().st_size:
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.parent.chmod(0o711)
            shutil.copy2(found, copy)
            copy.chmod(0o755)
        return copy

    def _prune(self, project_dir: Path, keep: Path) -> None:
        """The newest environments of the project stay; older ones go, and so do builds
        no project links to any more (after an hour: one may be about to)."""
        ready = sorted(
            (p for p in project_dir.iterdir() if (p / READY).exists()),
            key=lambda p: (p / READY).stat().st_mtime,
            reverse=True,
        )
        for old in ready[self.settings.venvs_kept :]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
        hour_ago = time.time() - 3600
        for marker in (self.root / "venvs" / ".builds").glob(f"*/{READY}"):
            config = marker.with_name("pyvenv.cfg")
            with contextlib.suppress(FileNotFoundError):  # another worker prunes too
                if config.stat().st_nlink == 1 and marker.stat().st_mtime < hour_ago:
                    shutil.rmtree(marker.parent, ignore_errors=True)


def _seal(tree: Path) -> None:
    """Owned by Hatchery's user, readable and runnable by anyone, writable by no one else."""
    uid, gid = os.geteuid(), os.getegid()
    for place in (tree, *tree.rglob("*")):
        os.lchown(place, uid, gid)
        if place.is_symlink():
            continue
        mode = place.stat().st_mode
        place.chmod(0o755 if place.is_dir() or mode & stat.S_IXUSR else 0o644)


def forget(settings: Settings, project: str) -> None:
    """Remove every environment of a project (it is deleted)."""
    shutil.rmtree(settings.migrations_dir.resolve() / "venvs" / project, ignore_errors=True)


def base_python(settings: Settings, sandbox: Sandbox) -> Path:
    """The interpreter project environments are made from: one the sandbox can run."""
    if settings.migration_python is not None:
        return settings.migration_python
    for candidate in (Path(sys.executable).resolve(), *SYSTEM_PYTHONS):
        if candidate.exists() and sandbox.reachable(candidate):
            return candidate
    raise EnvironmentFailed(
        f"no Python that user {settings.migration_user} can run: set HATCHERY_MIGRATION_PYTHON"
    )


@functools.cache
def _version_of(python: Path) -> str:
    import subprocess

    return subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


async def version_of(python: Path) -> str:
    return await asyncio.to_thread(_version_of, python)


@contextlib.asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    """One builder per environment across every worker of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

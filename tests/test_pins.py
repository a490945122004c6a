"""Every pin names a released package: a fresh machine installs exactly what CI did.

A pin to a file that exists on one machine only (a wheel in /tmp, a local index) installs
there and nowhere else, and CI, which runs on that machine, stays green.
"""

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT_FILES = ["constraints.txt", "clients/codegen-constraints.txt"]
NPM_LOCK = "clients/typescript/package-lock.json"
NPM_REGISTRY = "https://registry.npmjs.org/"

# `name==version`, optionally with extras; nothing else names a release.
RELEASED_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")
# What points at this machine: file URLs, absolute or home paths, wheels and archives on
# disk, extra indexes and link directories.
LOCAL = re.compile(
    r"file:|(^|\s|@|=)(/|~/|\.\./)\S|\.whl\b|\.tar\.gz\b|--find-links|--index-url|"
    r"--extra-index-url|(^|\s)-[fe]\s"
)
# Interpreters and tools the Dockerfile runs from its own virtualenv are not packages.
DOCKER_TOOL = re.compile(r"(^|\s)(--python\s+)?/opt/hatchery/bin/\S+")


def requirement_problems(text: str) -> list[str]:
    """Lines of a requirements or constraints file that are not a released pin."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        pin = line.split("#", 1)[0].strip()
        if pin and not RELEASED_PIN.match(pin):
            problems.append(f"line {number}: {line.strip()}")
    return problems


def npm_lock_problems(lock: dict[str, object]) -> list[str]:
    """Packages of an npm lock that are not releases from the registry."""
    problems = []
    packages = lock.get("packages", {})
    assert isinstance(packages, dict)
    for path, entry in packages.items():
        if not path:
            continue  # the root project itself
        resolved = entry.get("resolved", NPM_REGISTRY)
        version = str(entry.get("version", ""))
        if entry.get("link") or not resolved.startswith(NPM_REGISTRY) or LOCAL.search(version):
            problems.append(f"{path}: {json.dumps(entry)[:200]}")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    """Install commands of a Dockerfile that reach for files outside the build context."""
    problems = []
    logical = re.sub(r"\\\n", " ", text)
    for number, line in enumerate(logical.splitlines(), start=1):
        for command in re.split(r"&&|;", line):
            if "install" in command and LOCAL.search(DOCKER_TOOL.sub(" ", command)):
                problems.append(f"instruction {number}: {' '.join(command.split())[:200]}")
    return problems


def test_requirement_checker_names_a_file_pin_and_its_line() -> None:
    text = "anyio==4.16.0\nhttpx-sse @ file:///tmp/dl/httpx_sse-0.4.3-py3-none-any.whl\n"
    assert requirement_problems(text) == [
        "line 2: httpx-sse @ file:///tmp/dl/httpx_sse-0.4.3-py3-none-any.whl"
    ]
    for local in ("-e /src/lib", "/tmp/x.whl", "pkg @ git+https://example.com/p.git", "pkg>=1"):
        assert requirement_problems(local) == [f"line 1: {local}"], local


def test_npm_checker_names_linked_and_local_packages() -> None:
    lock = {
        "packages": {
            "": {"name": "root"},
            "node_modules/ok": {"version": "1.0.0", "resolved": NPM_REGISTRY + "ok/-/ok-1.0.0.tgz"},
            "node_modules/linked": {"resolved": "../lib", "link": True},
            "node_modules/tarball": {"version": "file:../x.tgz"},
        }
    }
    found = npm_lock_problems(lock)
    assert [p.split(":")[0] for p in found] == ["node_modules/linked", "node_modules/tarball"]


def test_dockerfile_checker_names_an_install_from_a_local_wheel() -> None:
    ok = "RUN /opt/hatchery/bin/uv pip install --python /opt/hatchery/bin/python -c c.txt .\n"
    bad = "RUN /opt/hatchery/bin/pip install \\\n    /tmp/dl/httpx_sse-0.4.3-py3-none-any.whl\n"
    assert dockerfile_problems(ok) == []
    assert dockerfile_problems(ok + bad) == [
        "instruction 2: RUN /opt/hatchery/bin/pip install /tmp/dl/httpx_sse-0.4.3-py3-none-any.whl"
    ]


@pytest.mark.parametrize("name", REQUIREMENT_FILES)
def test_every_python_pin_names_a_released_package(name: str) -> None:
    problems = requirement_problems((ROOT / name).read_text())
    assert not problems, f"{name} pins something other than a release:\n" + "\n".join(problems)


def test_pyproject_pins_released_packages_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
        *(p for extra in project["project"]["optional-dependencies"].values() for p in extra),
    ]
    problems = requirement_problems("\n".join(pins))
    assert not problems, "pyproject.toml pins something other than a release:\n" + "\n".join(
        problems
    )


def test_npm_lock_holds_registry_releases_only() -> None:
    lock = json.loads((ROOT / NPM_LOCK).read_text())
    problems = npm_lock_problems(lock)
    assert not problems, f"{NPM_LOCK} holds packages not from the registry:\n" + "\n".join(problems)
    package = json.loads((ROOT / NPM_LOCK).with_name("package.json").read_text())
    for name, version in package.get("devDependencies", {}).items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"package.json: {name} {version}"


def test_dockerfile_installs_from_the_build_context_and_the_registry_only() -> None:
    problems = dockerfile_problems((ROOT / "Dockerfile").read_text())
    assert not problems, "Dockerfile installs from this machine:\n" + "\n".join(problems)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize(
    ("venv", "pins"), [(".venv", "constraints.txt"), (".venv-codegen", REQUIREMENT_FILES[1])]
)
def test_every_installed_package_is_pinned(venv: str, pins: str) -> None:
    """Nothing in a virtualenv floats: what `make` installed is exactly what the pins say."""
    pinned = {}
    for line in (ROOT / pins).read_text().splitlines():
        name, _, version = line.partition("==")
        pinned[_canonical(name)] = version
    freeze = subprocess.run(
        [ROOT / ".venv/bin/uv", "pip", "freeze", "--exclude-editable", "--python",
         ROOT / venv / "bin/python"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    unpinned = []
    for line in freeze.splitlines():
        name, _, version = line.partition("==")
        # pip and setuptools come with a virtualenv made by `python -m venv`, not from pins.
        if (
            _canonical(name) not in {"pip", "setuptools"}
            and pinned.get(_canonical(name)) != version
        ):
            unpinned.append(f"{line} (pinned: {pinned.get(_canonical(name))})")
    assert not unpinned, f"{venv} holds what {pins} does not pin:\n" + "\n".join(unpinned)

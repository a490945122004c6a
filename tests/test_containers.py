"""No Docker engine runs here: keep the Dockerfile and compose.yaml right by reading them."""

import os
import re
from pathlib import Path

import pytest
import typer.main
import yaml

from hatchery.cli import app as cli
from hatchery.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def _cli_accepts(args: list[str]) -> bool:
    """True when the words name a `hatchery` command (options aside)."""
    command = typer.main.get_command(cli)
    for word in (a for a in args if not a.startswith("-")):
        if not hasattr(command, "commands"):
            break
        command = command.commands.get(word)
        if command is None:
            return False
    return not hasattr(command, "commands")


def test_compose_runs_migrate_api_worker_on_healthy_postgres_and_redis() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    for name in ("postgres", "redis", "api", "worker"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/var/lib/hatchery/repositories", "/var/lib/hatchery/backups"} <= mounts
    for name in ("migrate", "api", "worker"):
        assert _cli_accepts(services[name]["command"]), services[name]["command"]


def test_dockerfile_runs_hatchery_as_non_root_from_files_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for source in sources.split():
            assert (ROOT / source).exists(), source
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user and user[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["hatchery"]' in dockerfile
    assert _cli_accepts(["api"])


def test_compose_gives_every_process_the_settings_production_insists_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())

    def resolved(value: str) -> str:
        # ${NAME:?message} must come from the operator (32+ characters); ${NAME:-default}.
        return re.sub(
            r"\$\{(\w+)(?::([-?])([^}]*))?\}",
            lambda m: m.group(3) if m.group(2) == "-" else "s" * 40,
            str(value),
        )

    for name in ("migrate", "api", "worker"):
        environment = compose["services"][name]["environment"]
        assert environment["HATCHERY_ENVIRONMENT"].endswith(":-production}")
        for variable in list(os.environ):
            if variable.startswith("HATCHERY_"):
                monkeypatch.delenv(variable)
        for variable, value in environment.items():
            monkeypatch.setenv(variable, resolved(value))
        settings = Settings()  # raises when production would start insecure
        assert settings.environment == "production", name
    worker = compose["services"]["worker"]["environment"]
    assert worker["HATCHERY_WORKER_METRICS_PORT"] == "9101"

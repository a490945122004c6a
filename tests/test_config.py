import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hatchery.config import Settings

SAFE = {
    "key_hash_secret": "s" * 40,
    "encryption_key": "e" * 40,
    "cors_origins": ["https://app.example.com"],
    "redis_url": "redis://:a-password@redis:6379/0",
    "adoption_allowed_hosts": ["db.internal", "10.0.0.0/8"],
}


def test_production_accepts_safe_settings() -> None:
    assert Settings(environment="production", **SAFE).environment == "production"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"key_hash_secret": None}, "HATCHERY_KEY_HASH_SECRET"),
        ({"key_hash_secret": "short"}, "HATCHERY_KEY_HASH_SECRET"),
        ({"encryption_key": None}, "HATCHERY_ENCRYPTION_KEY"),
        ({"cors_origins": ["*"]}, "HATCHERY_CORS_ORIGINS"),
        ({"debug": True}, "HATCHERY_DEBUG"),
        ({"redis_url": "redis://redis:6379/0"}, "HATCHERY_REDIS_URL"),
        ({"adoption_allowed_hosts": []}, "HATCHERY_ADOPTION_ALLOWED_HOSTS"),
    ],
)
def test_production_refuses_insecure_defaults(override: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(environment="production", **{**SAFE, **override})


def test_production_may_disable_adoption_instead_of_listing_hosts() -> None:
    settings = Settings(
        environment="production", **{**SAFE, "adoption_allowed_hosts": []}, adoption_enabled=False
    )
    assert not settings.adoption_enabled


def test_adoption_hosts_are_host_names_or_networks() -> None:
    with pytest.raises(ValidationError, match="neither a host name nor a network"):
        Settings(adoption_allowed_hosts=["db.internal", "-oProxyCommand=x"])


def test_file_root_may_not_hold_hatcherys_own_repositories(tmp_path: Path) -> None:
    for root in (tmp_path, tmp_path / "repositories" / "inside"):
        with pytest.raises(ValidationError, match="HATCHERY_REPOSITORY_FILE_ROOT"):
            Settings(repository_file_root=root, repositories_dir=tmp_path / "repositories")


def test_local_allows_development_defaults() -> None:
    settings = Settings(environment="local", cors_origins=["*"], debug=True)
    assert settings.key_hash_key


def test_cors_origins_read_as_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHERY_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]


def test_cli_refuses_to_start_in_production_and_names_the_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hatchery.cli", "api"],
        env={
            "HATCHERY_ENVIRONMENT": "production",
            "HATCHERY_DATABASE_URL": "postgresql+asyncpg://x/y",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "HATCHERY_KEY_HASH_SECRET" in result.stderr

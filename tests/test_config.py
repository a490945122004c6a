import subprocess
import sys

import pytest
from pydantic import ValidationError

from hatchery.config import Settings

SAFE = {
    "key_hash_secret": "s" * 40,
    "encryption_key": "e" * 40,
    "cors_origins": ["https://app.example.com"],
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
    ],
)
def test_production_refuses_insecure_defaults(override: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(environment="production", **{**SAFE, **override})


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

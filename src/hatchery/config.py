import ipaddress
import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import limits
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOCAL_KEY_HASH_SECRET = "hatchery-local-insecure"  # noqa: S105 (refused in production)
LOCAL_ENCRYPTION_KEY = "hatchery-local-insecure-encryption"  # refused in production
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def redis_has_password(url: SecretStr) -> bool:
    """True when a Redis URL carries a password."""
    return bool(urlsplit(url.get_secret_value()).password)


class Environment(StrEnum):
    local = "local"
    staging = "staging"
    production = "production"


class InsecureSettingsError(ValueError):
    """Raised when production would start with a setting that is only safe locally."""


class Settings(BaseSettings):
    """One settings model for the api and the worker, read from `HATCHERY_*` variables."""

    model_config = SettingsConfigDict(env_prefix="HATCHERY_", extra="ignore")

    environment: Environment = Environment.local
    debug: bool = False

    # Unset means "not configured": `hatchery dev` starts embedded servers for them.
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    # Where project databases and roles are created (needs CREATEDB and CREATEROLE);
    # the control database's server when unset.
    projects_database_url: SecretStr | None = None

    repositories_dir: Path = Path(".hatchery/repositories")
    backups_dir: Path = Path(".hatchery/backups")
    # file:// repositories may be adopted only from under this directory (unset: never).
    repository_file_root: Path | None = None
    git_timeout_seconds: float = Field(default=300.0, gt=0)
    # Adopting existing databases, and the hosts or networks their URLs may name (unset:
    # any but link-local, metadata and loopback ones; production insists on a list).
    adoption_enabled: bool = True
    adoption_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    key_hash_secret: SecretStr | None = None
    # Encrypts credentials kept at rest (project role passwords).
    encryption_key: SecretStr | None = None
    # Templates beside the shipped ones: one copier template per sub-directory.
    extra_templates_dir: Path | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    shutdown_grace_seconds: float = 10.0

    # Rate limits (`limits` notation: "600/minute", "10/second;1000/hour"), counted in Redis.
    rate_limits_enabled: bool = True
    rate_limit_per_key: str = "1200/minute"
    rate_limit_per_address: str = "2400/minute"
    rate_limit_deployments: str = "60/minute"
    rate_limit_streams: str = "120/minute"

    worker_poll_delay: float = Field(default=0.02, gt=0)
    worker_heartbeat_seconds: int = Field(default=5, ge=1)
    worker_max_jobs: int = Field(default=10, ge=1)
    # On SIGTERM a worker takes no new jobs and lets running ones finish this long; a run
    # still going then goes back to the queue, its current step to be done again.
    worker_shutdown_grace_seconds: int = Field(default=20, ge=1)
    # Where a worker serves its Prometheus metrics; off when unset.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # Above HATCHERY_MIGRATION_TIMEOUT_SECONDS: arq cancels a job that outlives it.
    job_timeout_seconds: int = Field(default=3600, ge=1)
    job_max_tries: int = Field(default=3, ge=1)

    readiness_timeout_seconds: float = 2.0

    run_heartbeat_seconds: float = Field(default=2.0, gt=0)
    run_stale_after_seconds: float = Field(default=30.0, gt=0)
    reaper_interval_seconds: int = Field(default=10, ge=1, le=60)
    # How long a worker keeps trying to record a run's progress while the control
    # database is unreachable (a restart, a failover) before giving the run up.
    control_database_wait_seconds: float = Field(default=300.0, gt=0)
    event_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    sse_retry_ms: int = Field(default=3000, ge=0)
    sse_max_connection_seconds: float = Field(default=600.0, gt=0)
    # How long a stream ticket (for EventSource, in the URL) can open connections.
    sse_ticket_seconds: int = Field(default=900, ge=10)

    # A project's code (its dependency builds, its env.py and revisions) runs in a child
    # process: as this user when Hatchery runs as root (as Hatchery's own user otherwise),
    # with these limits, from virtualenvs and scratch directories under migrations_dir.
    migrations_dir: Path = Path(".hatchery/migrations")
    migration_user: str = "nobody"
    # The Python project virtualenvs are made from; unset: Hatchery's own, or the
    # system's when the migration user cannot run Hatchery's.
    migration_python: Path | None = None
    migration_timeout_seconds: float = Field(default=1800.0, gt=0)
    migration_cpu_seconds: int = Field(default=1800, ge=1)
    migration_memory_mb: int = Field(default=4096, ge=64)
    migration_file_size_mb: int = Field(default=1024, ge=1)
    venv_build_timeout_seconds: float = Field(default=900.0, gt=0)
    # How long a request waits for a worker to read a commit's migrations (history, dry
    # run) before answering 503 with Retry-After; the worker goes on and caches it.
    inspection_wait_seconds: float = Field(default=60.0, gt=0)
    # Virtualenvs kept per project (the newest ones); older ones are removed.
    venvs_kept: int = Field(default=2, ge=1)
    migration_lock_timeout_ms: int = Field(default=5000, ge=0)
    migration_statement_timeout_ms: int = Field(default=600_000, ge=0)
    # How long a run waits for another migrator of the same database to finish.
    migration_wait_seconds: float = Field(default=900.0, gt=0)
    backup_keep_count: int = Field(default=10, ge=1)
    backup_keep_days: int = Field(default=30, ge=1)
    # After a refresh, the database it replaced is kept (until the next refresh of that
    # environment) as the way back; false drops it at once.
    refresh_keep_previous: bool = True
    # Masking rewrites a table this many 8 KiB pages per transaction (one progress event).
    refresh_batch_pages: int = Field(default=2048, ge=1)
    # Connections pg_restore uses at once to load a refresh's scratch database.
    refresh_restore_jobs: int = Field(default=2, ge=1, le=32)
    # How often a worker looks for refresh schedules that are due.
    refresh_schedule_check_seconds: int = Field(default=10, ge=1, le=60)

    schema_statement_timeout_ms: int = Field(default=5000, ge=1)
    # How long an api process remembers a verified key or an environment's database.
    # Revocation and deletion reach every process at once over Redis; this bounds
    # staleness should that message be lost.
    memory_cache_seconds: float = Field(default=30.0, ge=0)
    # A cached schema is re-verified against an exact catalog checksum this often, on
    # top of the per-request check of PostgreSQL's catalog statistics.
    schema_verify_seconds: float = Field(default=10.0, gt=0)
    schema_cache_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    schema_sensitive_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "password", "passwd", "secret", "token", "api_?key", "ssn", "credit_?card",
            "private_?key", "salt",
        ]
    )  # fmt: skip
    schema_hide_sensitive: bool = False

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, data: dict[str, object]) -> dict[str, object]:
        for name in ("cors_origins", "schema_sensitive_patterns", "adoption_allowed_hosts"):
            value = data.get(name)
            if isinstance(value, str):
                data[name] = [v.strip() for v in value.split(",") if v.strip()]
        return data

    @field_validator(
        "rate_limit_per_key",
        "rate_limit_per_address",
        "rate_limit_deployments",
        "rate_limit_streams",
    )
    @classmethod
    def _one_rate_limit(cls, value: str) -> str:
        limits.parse(value)  # a ValueError names the setting
        return value

    @field_validator("adoption_allowed_hosts")
    @classmethod
    def _hosts_or_networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                if not HOST_NAME.fullmatch(value):
                    raise ValueError(f"{value!r} is neither a host name nor a network") from None
        return values

    @model_validator(mode="after")
    def _file_root_apart_from_data(self) -> "Settings":
        root = self.repository_file_root
        if root is not None:
            for data in (self.repositories_dir, self.backups_dir):
                a, b = root.resolve(), data.resolve()
                if a.is_relative_to(b) or b.is_relative_to(a):
                    raise InsecureSettingsError(
                        f"HATCHERY_REPOSITORY_FILE_ROOT must not hold or be inside {data}"
                    )
        return self

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> "Settings":
        if self.environment is not Environment.production:
            return self
        if self.key_hash_secret is None or len(self.key_hash_secret.get_secret_value()) < 32:
            raise InsecureSettingsError(
                "HATCHERY_KEY_HASH_SECRET must be set to at least 32 characters in production"
            )
        if self.encryption_key is None or len(self.encryption_key.get_secret_value()) < 32:
            raise InsecureSettingsError(
                "HATCHERY_ENCRYPTION_KEY must be set to at least 32 characters in production"
            )
        if "*" in self.cors_origins:
            raise InsecureSettingsError(
                "HATCHERY_CORS_ORIGINS must list origins explicitly in production, not '*'"
            )
        if self.debug:
            raise InsecureSettingsError("HATCHERY_DEBUG must be off in production")
        if self.redis_url is not None and not redis_has_password(self.redis_url):
            raise InsecureSettingsError(
                "HATCHERY_REDIS_URL must carry a password in production (redis://:PASSWORD@host)"
            )
        if self.adoption_enabled and not self.adoption_allowed_hosts:
            raise InsecureSettingsError(
                "HATCHERY_ADOPTION_ALLOWED_HOSTS must list the database hosts or networks "
                "that may be adopted in production (or set HATCHERY_ADOPTION_ENABLED=false)"
            )
        return self

    @property
    def key_hash_key(self) -> bytes:
        secret = self.key_hash_secret
        return (secret.get_secret_value() if secret else LOCAL_KEY_HASH_SECRET).encode()

    @property
    def encryption_secret(self) -> bytes:
        secret = self.encryption_key
        return (secret.get_secret_value() if secret else LOCAL_ENCRYPTION_KEY).encode()

    def projects_server_url(self) -> str:
        if self.projects_database_url is not None:
            return self.projects_database_url.get_secret_value()
        return self.require_database_url()

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise MissingSettingError("HATCHERY_DATABASE_URL")
        return self.database_url.get_secret_value()

    def require_redis_url(self) -> str:
        if self.redis_url is None:
            raise MissingSettingError("HATCHERY_REDIS_URL")
        return self.redis_url.get_secret_value()


class MissingSettingError(RuntimeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not set (or run `hatchery dev` for embedded servers)")


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""What Hatchery keeps or shows of the output of processes a project controls (git, the
project's migrations, PostgreSQL's tools) is redacted first: known secrets, credentials
in URLs and passwords in statements never reach a row, an event or a log line."""

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"
# Shorter strings would blank out ordinary words.
_MIN_SECRET = 6
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
# `password=...`, `token: ...`, and SQL's `PASSWORD '...'`.
_PASSWORD_CLAUSE = re.compile(
    r"(?i)(\b(?:password|passwd|pwd|secret|token)\b(?:\s*[=:]\s*|\s+(?=['\"])))"
    r"('[^']*'|\"[^\"]*\"|[^\s,;)'\"]+)"
)


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that must never be shown: itself, and its password."""
    password = urlsplit(url).password if "://" in url else None
    return [url, *([password, unquote(password)] if password else [])]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)
    return _PASSWORD_CLAUSE.sub(rf"\1{REDACTED}", text)


def public_url(repository_url: str) -> str:
    """The repository URL without credentials."""
    parts = urlsplit(repository_url)
    if not parts.password and not parts.username:
        return repository_url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))

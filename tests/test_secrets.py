"""No generated password (of a project's role, of the servers) appears in anything a client
or an operator reads: every response the suite received, every log line its processes
wrote, every error and output Hatchery stored. Runs last (tests/conftest.py)."""

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchery import crypto
from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres, EmbeddedRedis
from hatchery.redaction import url_secrets
from tests.conftest import RESPONSES

STORED = """
SELECT concat_ws(' ', error, error_code, result::text) FROM run
UNION ALL SELECT concat_ws(' ', error, error_trace, output::text) FROM step
UNION ALL SELECT concat_ws(' ', initialization_error, initialization_summary::text) FROM project
UNION ALL SELECT concat_ws(' ', error, failing_statement) FROM migration_record
UNION ALL SELECT detail::text FROM audit_event
"""


async def test_no_generated_password_appears_in_any_response_log_line_or_stored_error(
    engine: AsyncEngine,
    settings: Settings,
    postgres: EmbeddedPostgres,
    redis_server: EmbeddedRedis,
    scratch_dir: Path,
) -> None:
    async with engine.connect() as conn:
        # Adopted projects' urls were chosen by the tests (`u:p@...`), not generated.
        sealed = (
            await conn.execute(
                text(
                    "SELECT e.database_url FROM environment e JOIN project p ON p.id = e.project_id"
                    " WHERE p.origin_url IS NULL"
                )
            )
        ).scalars()
        urls = [crypto.decrypt(s, settings.encryption_secret) for s in sealed if s]
        stored = [row or "" for row in (await conn.execute(text(STORED))).scalars()]
    passwords = {p for url in urls for p in url_secrets(url)[1:]}
    assert passwords, "the suite provisioned no project whose password could leak"
    passwords |= {postgres.password, redis_server.password}
    logs = [p.read_text(errors="replace") for p in scratch_dir.rglob("*.log")]
    places = {"response": RESPONSES, "log": logs, "stored": stored}
    for where, texts in places.items():
        leaked = [p for p in passwords if any(p in t for t in texts)]
        assert not leaked, f"a generated password is in a {where}"

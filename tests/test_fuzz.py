"""Schemathesis over every operation of the live api, as an admin: no 5xx and no
response outside the documented schema (status, media type, headers, body).

`make test` runs a bounded number of examples; for a longer run:
HATCHERY_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/test_fuzz.py
"""

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchery import db
from hatchery.config import Settings
from hatchery.keys.models import Scope
from tests.conftest import bearer, make_key
from tests.e2e.helpers import active_project

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = os.environ.get("HATCHERY_FUZZ_EXAMPLES", "20")
# Checks that everything the api answers is documented. Left out: "positive data
# acceptance", which expects every schema-valid request to succeed, while some inputs
# are refused by rules a schema cannot state (a template that does not exist, exactly
# one of two fields), answered with a documented 422; and "use after free", which
# expects a DELETE to make its resource vanish, while deleting a project starts a delete
# run (202) and keeps the project (status `deleted`) and its runs as history.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free"]
# Revoking keys takes part in every phase, stateful chains included: tests/fuzz_hooks.py
# lets the fuzzer revoke only the keys it made.
HOOKS = "tests.fuzz_hooks"
ROOT = Path(__file__).resolve().parents[1]


async def test_fuzzing_every_operation_finds_no_server_error_and_no_undocumented_answer(
    live: httpx.AsyncClient, live_admin_token: str, engine: AsyncEngine, settings: Settings
) -> None:
    project, _ = await active_project(live, live_admin_token, "fuzzed")
    async with db.create_sessionmaker(engine)() as session:
        key, token = await make_key(session, settings, Scope.admin)
    env = {
        **os.environ,
        "HATCHERY_FUZZ_TOKEN": token,
        "HATCHERY_FUZZ_PROJECT": project["id"],
        "SCHEMATHESIS_HOOKS": HOOKS,
        "PYTHONPATH": str(ROOT),
    }
    revoked_before = [
        k
        for k in (await live.get("/api/v1/keys", headers=bearer(token))).json()["items"]
        if k["revoked_at"] and not k["project_id"]
    ]
    st = Path(sys.executable).with_name("st")
    document = f"{str(live.base_url).rstrip('/')}/openapi.json"
    result = subprocess.run(
        [
            str(st), "--config-file", str(CONFIG), "run", document,
            *CHECKS, "--max-examples", EXAMPLES, "--seed", "20261124",
            "--generation-database", "none", "--no-color",
        ],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-30_000:] + result.stderr[-5_000:]
    assert "Tested:" in result.stdout
    assert "Stateful" in result.stdout, result.stdout[-3_000:]
    keys = (await live.get("/api/v1/keys", headers=bearer(token))).json()["items"]
    made = [k for k in keys if datetime.fromisoformat(k["created_at"]) > key.created_at]
    assert any(k["revoked_at"] for k in made), "no key the fuzzer made was revoked"
    # Deleting the fuzzed project revokes its deploy token; no other key of the suite goes.
    others = [k for k in keys if datetime.fromisoformat(k["created_at"]) <= key.created_at]
    assert [k for k in others if k["revoked_at"] and not k["project_id"]] == revoked_before

"""Clients generated from the live api's OpenAPI document: a Python client
(openapi-python-client) that hatches a project and reads its schema, and TypeScript
types (openapi-typescript) whose schema objects are real types, not `any`."""

import importlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / ".venv-codegen/bin/openapi-python-client"
NODE_BIN = ROOT / "clients/typescript/node_modules/.bin"


@pytest.fixture
async def document(live: httpx.AsyncClient, tmp_path: Path) -> Path:
    path = tmp_path / "openapi.json"
    path.write_bytes((await live.get("/openapi.json")).content)
    return path


def quietly(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "warn" not in output.lower(), output
    return output


async def test_a_generated_python_client_hatches_a_project_and_reads_its_schema(
    live: httpx.AsyncClient, live_admin_token: str, document: Path, tmp_path: Path
) -> None:
    quietly(
        [str(GENERATOR), "generate", "--path", str(document), "--meta", "none",
         "--output-path", str(tmp_path / "hatchery_client"),
         "--config", str(ROOT / "clients/python.yml")],
        cwd=tmp_path,
    )  # fmt: skip
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("hatchery_client")
        projects = importlib.import_module("hatchery_client.api.projects.create_project")
        runs = importlib.import_module("hatchery_client.api.runs.get_run")
        schema = importlib.import_module("hatchery_client.api.schema.get_schema")
        models = importlib.import_module("hatchery_client.models")
    finally:
        sys.path.remove(str(tmp_path))

    client = client_module.AuthenticatedClient(
        base_url=str(live.base_url), token=live_admin_token, timeout=httpx.Timeout(30)
    )
    with client:
        created = projects.sync(
            client=client,
            body=models.ProjectCreate(
                slug="generated", name="Generated", template="fastapi-service"
            ),
        )
        assert isinstance(created, models.ProjectCreated), created
        deadline = time.monotonic() + 60
        run = runs.sync(created.run.id, client=client)
        while run.status not in (models.RunStatus.SUCCEEDED, models.RunStatus.FAILED):
            assert time.monotonic() < deadline, run.status
            time.sleep(0.2)
            run = runs.sync(created.run.id, client=client)
        assert run.status == models.RunStatus.SUCCEEDED

        document_ = schema.sync(created.project.id, "staging", client=client)
    assert isinstance(document_, models.SchemaDocument), document_
    tables = {table.name: table for table in document_.tables}
    assert "item" in tables
    columns = {column.name: column for column in tables["item"].columns}
    assert columns["id"].type_ == "bigint" and columns["id"].nullable is False
    assert document_.revision == "0001"


def test_generated_typescript_types_are_real_types(document: Path, tmp_path: Path) -> None:
    quietly([str(NODE_BIN / "openapi-typescript"), str(document), "-o", "hatchery.d.ts"], tmp_path)
    # Compiles only if the fields are typed: `any` would make IsAny true.
    (tmp_path / "check.ts").write_text(
        """import type { components } from "./hatchery";
type IsAny<T> = 0 extends 1 & T ? true : false;
type Column = components["schemas"]["Column"];
type Table = components["schemas"]["Table"];
const typed: [IsAny<Column["type"]>, IsAny<Column["nullable"]>, IsAny<Table["columns"]>] =
  [false, false, false];
const column: Column["nullable"] = true;
export { typed, column };
"""
    )
    quietly([str(NODE_BIN / "tsc"), "--strict", "--noEmit", "check.ts"], tmp_path)

"""The schema API against what `psql \\d+` reports for the same database."""

import re
import subprocess
from typing import Any

import httpx
import pytest

from hatchery.embedded import EmbeddedPostgres
from hatchery.projects.models import Project
from hatchery.schema.schemas import SchemaDocument, TableDocument
from tests.conftest import bearer

SEPARATOR = "\x1f"


def describe(
    postgres: EmbeddedPostgres, database: str, table: str
) -> tuple[list[list[str]], list[str]]:
    """`\\d+ table`: its column rows, and its footer lines."""
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "hatchery", "-d", database,
         "-qA", "-F", SEPARATOR, "-c", f"\\d+ {table}"],
        env={"PGPASSWORD": postgres.password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Column" + SEPARATOR))
    rows, footer = [], []
    for line in lines[header + 1 :]:
        if SEPARATOR in line and not footer and not line.startswith(" "):
            rows.append(line.split(SEPARATOR))
        elif not re.match(r"^\(\d+ rows?\)$", line):
            footer.append(line)
    return rows, footer


async def fetch(
    client: httpx.AsyncClient, project: Project, token: str, suffix: str = ""
) -> httpx.Response:
    return await client.get(
        f"/api/v1/projects/{project.id}/environments/staging/schema{suffix}", headers=bearer(token)
    )


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


TABLES = ["customer", "orders", "audit.event", "audit.event_2026", "big_orders", "region_totals"]


@pytest.mark.parametrize("qualified", TABLES)
async def test_columns_match_psql(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str,
    postgres: EmbeddedPostgres, schema_database: str, qualified: str,
) -> None:  # fmt: skip
    document = (await fetch(client, schema_project, schema_token)).json()
    SchemaDocument.model_validate(document)
    schema, _, name = qualified.rpartition(".")
    table = next(
        t for t in document["tables"] if t["name"] == name and t["schema"] == (schema or "public")
    )
    rows, _ = describe(postgres, schema_database, qualified)
    assert [c["name"] for c in table["columns"]] == [row[0] for row in rows]
    for column, row in zip(table["columns"], rows, strict=True):
        _, type_, _, nullable, default, *_, description = row
        assert column["type"] == type_
        assert column["nullable"] == (nullable != "not null")
        if column["identity"]:
            assert default == f"generated {column['identity'].replace('_', ' ')} as identity"
        elif column["generated"]:
            assert default == f"generated always as ({column['generated']}) stored"
        elif not column["sensitive"]:
            assert (column["default"] or "") == default
            assert (column["comment"] or "") == description


async def test_constraints_indexes_policies_and_partitions_match_psql(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str,
    postgres: EmbeddedPostgres, schema_database: str,
) -> None:  # fmt: skip
    tables = {
        f"{t['schema']}.{t['name']}": t
        for t in (await fetch(client, schema_project, schema_token)).json()["tables"]
    }
    _, footer = describe(postgres, schema_database, "customer")
    text = "\n".join(footer)
    customer = tables["public.customer"]
    for index in customer["indexes"]:
        line = next(line for line in footer if line.strip().startswith(f'"{index["name"]}"'))
        assert f"{index['method']} ({', '.join(index['columns'])})" in line
        assert (f"WHERE {index['predicate']}" in line) == (index["predicate"] is not None)
        assert ("UNIQUE" in line or "PRIMARY KEY" in line) == index["unique"]
    assert by_name(customer["indexes"])["ix_customer_lower_email"]["columns"] == ["lower(email)"]
    check = customer["check_constraints"][0]
    assert f'"{check["name"]}" {check["definition"]}' in text
    assert customer["primary_key"] == {"name": "customer_pkey", "columns": ["id"]}
    assert customer["unique_constraints"][0]["columns"] == ["region", "code"]

    _, footer = describe(postgres, schema_database, "orders")
    text = "\n".join(footer)
    fk = tables["public.orders"]["foreign_keys"][0]
    assert fk["referenced_table"] == "public.customer"
    assert (fk["columns"], fk["referenced_columns"]) == (["region", "code"], ["region", "code"])
    assert (fk["on_update"], fk["on_delete"]) == ("cascade", "restrict")
    definition = "FOREIGN KEY (region, code) REFERENCES customer(region, code) "
    assert f'"{fk["name"]}" {definition}ON UPDATE CASCADE ON DELETE RESTRICT' in text
    policy = tables["public.orders"]["policies"][0]
    assert f'POLICY "{policy["name"]}" FOR {policy["command"].upper()}' in text
    assert f"USING ({policy['using']})" in text
    assert tables["public.orders"]["row_level_security"] == {"enabled": True, "forced": False}

    _, footer = describe(postgres, schema_database, "audit.event")
    event = tables["audit.event"]
    assert event["kind"] == "partitioned_table"
    assert f"Partition key: {event['partitioning']['key']}" in footer
    _, footer = describe(postgres, schema_database, "audit.event_2026")
    partition = tables["audit.event_2026"]["partitioning"]
    assert f"Partition of: audit.event {partition['bound']}" in footer
    assert tables["audit.event_default"]["partitioning"]["bound"] == "DEFAULT"


async def test_views_types_sequences_and_comments(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str,
    postgres: EmbeddedPostgres, schema_database: str,
) -> None:  # fmt: skip
    document = (await fetch(client, schema_project, schema_token)).json()
    tables = {f"{t['schema']}.{t['name']}": t for t in document["tables"]}
    assert tables["public.big_orders"]["kind"] == "view"
    assert tables["public.region_totals"]["kind"] == "materialized_view"
    _, footer = describe(postgres, schema_database, "big_orders")
    assert tables["public.big_orders"]["definition"].strip() in "\n".join(footer)
    assert "public.alembic_version" not in tables
    assert document["revision"] == "abc123"
    assert by_name(document["schemas"])["audit"]["comment"] == "who did what"
    assert tables["public.customer"]["comment"] == "people who buy"

    assert document["enums"] == [
        {"schema": "public", "name": "mood", "labels": ["happy", "sad", "neutral"], "comment": None}
    ]
    domain = document["domains"][0]
    assert (domain["name"], domain["base_type"], domain["nullable"]) == (
        "positive_int",
        "integer",
        False,
    )
    assert domain["checks"] == [{"name": "positive", "definition": "CHECK (VALUE > 0)"}]
    sequences = by_name(document["sequences"])
    assert (
        sequences["invoice_number"]["start"] == 1000
        and sequences["invoice_number"]["increment"] == 5
    )
    assert sequences["orders_id_seq"]["owned_by"] == "public.orders.id"

    columns = by_name(tables["public.customer"]["columns"])
    assert columns["moods"]["is_array"] and columns["moods"]["enum"] == "public.mood"
    assert columns["quantity"]["domain"] == "public.positive_int"
    assert columns["id"]["identity"] == "always"
    assert columns["full_name"]["generated"] == "(region || ':'::text) || code::text"


async def test_sensitive_columns_are_flagged_without_default_or_comment(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str
) -> None:
    document = (await fetch(client, schema_project, schema_token)).json()
    customer = next(t for t in document["tables"] if t["name"] == "customer")
    column = by_name(customer["columns"])["password_hash"]
    assert column["sensitive"] is True
    assert column["default"] is None and column["comment"] is None
    assert by_name(customer["columns"])["email"]["sensitive"] is False


async def test_filters_by_schema_kind_and_parts(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str
) -> None:
    audit = (await fetch(client, schema_project, schema_token, "?schema=audit")).json()
    assert {t["schema"] for t in audit["tables"]} == {"audit"}
    assert [s["name"] for s in audit["schemas"]] == ["audit"]
    views = (
        await fetch(client, schema_project, schema_token, "?kind=view&kind=materialized_view")
    ).json()
    assert {t["kind"] for t in views["tables"]} == {"view", "materialized_view"}
    lean = (await fetch(client, schema_project, schema_token, "?include=columns")).json()
    table = lean["tables"][0]
    assert table["columns"] and "indexes" not in table and "definition" not in table
    stats = (await fetch(client, schema_project, schema_token, "?include=default,stats")).json()
    assert all(t["stats"]["row_estimate"] >= 0 for t in stats["tables"])
    assert "stats" not in (await fetch(client, schema_project, schema_token)).json()["tables"][0]
    bad = await fetch(client, schema_project, schema_token, "?include=rows")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.include"


async def test_one_table_by_name(
    client: httpx.AsyncClient, schema_project: Project, schema_token: str
) -> None:
    response = await fetch(client, schema_project, schema_token, "/tables/audit.event")
    assert response.status_code == 200
    document = TableDocument.model_validate(response.json())
    assert document.table.name == "event" and document.table.partitioning is not None
    orders = (await fetch(client, schema_project, schema_token, "/tables/public.orders")).json()
    assert orders["table"]["foreign_keys"][0]["referenced_columns"] == ["region", "code"]
    assert (
        await fetch(client, schema_project, schema_token, "/tables/public.nope")
    ).status_code == 404
    malformed = await fetch(client, schema_project, schema_token, "/tables/orders")
    assert malformed.status_code == 422

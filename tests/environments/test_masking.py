"""Masking in SQL on real PostgreSQL: what each strategy makes of a value, once per row
however the batches fall, alike across tables, and what it refuses."""

import hashlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from hatchery import db
from hatchery.embedded import EmbeddedPostgres
from hatchery.environments import masking

TABLES = """
DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;
CREATE TABLE people (
  id int PRIMARY KEY, email varchar(200) NOT NULL, password text, token uuid,
  pin integer, born date, note text, phone text, city text, nickname text NOT NULL
);
INSERT INTO people
  SELECT g, 'p' || g || '@real.org', 'pw' || g, md5(g::text)::uuid, g, DATE '2000-01-01' + g,
         CASE WHEN g % 2 = 0 THEN 'note ' || g END, '+49 ' || g, 'Berlin', 'nick' || g
  FROM generate_series(1, 3000) g;
CREATE TABLE invites (id int PRIMARY KEY, email text);
INSERT INTO invites SELECT g, 'p' || (g * 3) || '@real.org' FROM generate_series(1, 500) g;
"""
RULES = [
    {"table": "public.people", "column": "email", "strategy": "email"},
    {"table": "public.invites", "column": "email", "strategy": "email"},
    {"table": "public.people", "column": "token", "strategy": "hash"},
    {"table": "public.people", "column": "pin", "strategy": "hash"},
    {"table": "public.people", "column": "born", "strategy": "fixed", "value": "1970-01-01"},
    {"table": "public.people", "column": "note", "strategy": "null"},
    {"table": "public.people", "column": "phone", "strategy": "fake:phone"},
    {"table": "public.people", "column": "city", "strategy": "fake:city"},
]


def sensitive(name: str) -> bool:
    return "password" in name or "nickname" in name


@pytest.fixture
async def conn(postgres: EmbeddedPostgres) -> AsyncIterator[AsyncConnection]:
    postgres.psql("postgres", "DROP DATABASE IF EXISTS masking_test; CREATE DATABASE masking_test")
    postgres.psql("masking_test", TABLES)
    async with db.connection(
        postgres.url("masking_test"), isolation_level="AUTOCOMMIT"
    ) as connection:
        yield connection


async def test_every_strategy_masks_each_row_once_and_alike_across_tables(
    conn: AsyncConnection,
) -> None:
    masked, problems = masking.plan(await masking.columns(conn), RULES, sensitive)
    assert problems == []
    chosen = {(m.column.table, m.column.name): m.strategy for m in masked}
    assert chosen[("people", "password")] == "hash"  # sensitive by default
    assert chosen[("people", "nickname")] == "hash"
    await masking.remember_sources(conn, masked)
    seen: list[tuple[str, int, int]] = []

    async def progress(table: str, pages: int, total: int) -> None:
        seen.append((table, pages, total))

    seed = masking.new_seed()
    async with db.connection(conn.engine.url, isolation_level="AUTOCOMMIT") as other:
        report = await masking.mask([conn, other], masked, seed, progress, batch_pages=3)
    assert report["rows"] == 3500
    people = [p for p in seen if p[0] == '"public"."people"']
    assert len(people) > 5 and people[-1][1] == people[-1][2]  # many batches, to the end

    rows = (await conn.execute(text("SELECT * FROM people ORDER BY id"))).mappings().all()
    for row in rows:
        i = row["id"]
        digest = hashlib.sha256(f"{seed}p{i}@real.org".encode()).hexdigest()
        assert row["email"] == f"user-{digest[:16]}@example.invalid"  # masked exactly once
        assert row["password"] == hashlib.sha256(f"{seed}pw{i}".encode()).hexdigest()
        assert str(row["token"]) != hashlib.md5(str(i).encode()).hexdigest()  # noqa: S324
        assert row["pin"] != i and isinstance(row["pin"], int)
        assert str(row["born"]) == "1970-01-01"
        assert row["note"] is None
        assert row["phone"].startswith("+1-555-") and len(row["phone"]) == 14
        assert row["city"] in masking.LISTS["city"]
    # An email masks to the same value in every table: foreign keys by email still hold.
    orphans = "SELECT count(*) FROM invites i LEFT JOIN people p USING (email) WHERE p.id IS NULL"
    assert await conn.scalar(text(orphans)) == 0
    assert await conn.scalar(text("SELECT count(DISTINCT email) FROM people")) == 3000
    left = await masking.leftovers(conn, masked)
    assert left and not any(left.values())
    assert "public.people.city" not in left  # a short list of cities: not checked


async def test_the_check_finds_a_source_value_left_behind(conn: AsyncConnection) -> None:
    masked, _ = masking.plan(await masking.columns(conn), RULES[:1], sensitive)
    await masking.remember_sources(conn, masked)
    await masking.mask([conn], masked, masking.new_seed(), _ignore, batch_pages=100)
    await conn.execute(text("UPDATE people SET email = 'p7@real.org' WHERE id = 1"))
    left = await masking.leftovers(conn, masked)
    assert left["public.people.email"] == 1


async def _ignore(table: str, pages: int, total: int) -> None:
    return None


async def test_rules_that_cannot_apply_are_named_before_anything_runs(
    conn: AsyncConnection,
) -> None:
    rules = [
        {"table": "public.people", "column": "nickname", "strategy": "null"},
        {"table": "public.people", "column": "born", "strategy": "hash"},
        {"table": "public.people", "column": "pin", "strategy": "email"},
        {"table": "public.people", "column": "nope", "strategy": "hash"},
        {"table": "public.people", "column": "password", "strategy": "keep"},
        {"table": "public.people", "column": "token", "strategy": "fixed", "value": "nope"},
    ]
    masked, problems = await masking.planned(conn, rules, sensitive)
    assert problems == [
        "rule for public.people.nope: no such column",
        "public.people.nickname: is NOT NULL: `null` cannot apply (use hash, fixed or fake)",
        "public.people.born: `hash` does not apply to date (use null or fixed)",
        "public.people.pin: `email` needs a text column, not integer",
        "public.people.token: 'nope' is not a uuid (invalid input syntax for type uuid: \"nope\")",
    ]
    assert "password" not in {m.column.name for m in masked}  # kept, though sensitive

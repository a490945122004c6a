"""Schema API speed: cold, warm (cached) and 304 reads of a 1,000-table database.

One real api process serves the schema of a database with N tables of 20 columns, an
index and a foreign key each. In the same run, on the same database: SQLAlchemy's
MetaData.reflect(), per-table Inspector calls, and `pg_dump --schema-only` as a
reference. Then the cold read once more on 5,000 tables.

    .venv/bin/python -m bench.schema_introspection [--tables 1000] [--large 5000]
"""

import argparse
import asyncio
import statistics
import subprocess
import time
import uuid

from sqlalchemy import MetaData, inspect

from bench.common import Client, Stack, percentile, stack, start_api, stop
from hatchery import db, queue
from hatchery.pgtools import libpq_environment, pg_binary
from hatchery.projects import provisioning
from hatchery.projects.models import Environment, Project, ProjectStatus
from hatchery.schema.cache import PREFIX


def build_database(stack_: Stack, name: str, tables: int) -> None:
    stack_.postgres.psql("postgres", f"CREATE DATABASE {name}")
    statements = []
    for i in range(tables):
        columns = ", ".join(
            f"c{j} {('text', 'integer', 'timestamptz', 'numeric(12,2)')[j % 4]}" for j in range(17)
        )
        parent = f"REFERENCES t{i - 1} (id)" if i else ""
        statements.append(
            f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, {columns}, "
            f"parent_id bigint {parent}, created_at timestamptz NOT NULL DEFAULT now());"
            f"CREATE INDEX ix_t{i}_c1 ON t{i} (c1);"
        )
    for start in range(0, len(statements), 500):
        stack_.postgres.psql(name, "BEGIN;" + "".join(statements[start : start + 500]) + "COMMIT;")


async def register(stack_: Stack, database: str) -> uuid.UUID:
    engine = db.create_engine(stack_.settings.require_database_url())
    async with db.create_sessionmaker(engine)() as session, db.transaction(session):
        project = Project(
            slug=f"bench-{uuid.uuid4().hex[:6]}", name="bench", template="fastapi-service",
            status=ProjectStatus.active, repository_url="file:///dev/null", repository_path="/dev/null",
            environments=[
                Environment(
                    name="staging", position=0, database_name=database, role_name="hatchery",
                    database_url=provisioning.seal(
                        stack_.postgres.url(database), stack_.settings.encryption_secret
                    ),
                )
            ],
        )  # fmt: skip
        session.add(project)
    project_id = project.id
    await engine.dispose()
    return project_id


async def forget(redis_url: str) -> None:
    client = queue.connect(redis_url)
    async for key in client.scan_iter(match=f"{PREFIX}*"):
        await client.delete(key)
    await queue.close(client)


async def timed_get(
    client: Client, url: str, **headers: str
) -> tuple[float, tuple[int, dict[str, str], bytes]]:
    started = time.perf_counter()
    response = await client.get(url, **headers)
    elapsed = (time.perf_counter() - started) * 1000
    assert response[0] in (200, 304), response[2][:300]
    return elapsed, response


async def endpoint(
    stack_: Stack, port: int, project_id: uuid.UUID, tables: int, repeat: int
) -> dict[str, list[float]]:
    base = f"/api/v1/projects/{project_id}/environments/staging/schema"
    table = f"{base}/tables/public.t{tables // 2}"
    figures: dict[str, list[float]] = {
        "cold": [],
        "warm": [],
        "304": [],
        "table cold": [],
        "table warm": [],
    }
    async with Client(port, stack_.admin_token) as client:
        await timed_get(client, base)  # connections, caches of the api process
        for _ in range(repeat):
            await forget(stack_.redis.url)
            figures["cold"].append((await timed_get(client, base))[0])
        _, response = await timed_get(client, base)
        etag = response[1]["etag"]
        for _ in range(repeat * 5):
            figures["warm"].append((await timed_get(client, base))[0])
        for _ in range(repeat * 5):
            figures["304"].append((await timed_get(client, base, **{"If-None-Match": etag}))[0])
        for _ in range(repeat):
            await forget(stack_.redis.url)
            figures["table cold"].append((await timed_get(client, table))[0])
            figures["table warm"].append((await timed_get(client, table))[0])
        figures["size"] = [len(response[2]) / 2**20]
    return figures


async def reflection(url: str, repeat: int) -> tuple[float, float]:
    """Median of `repeat` MetaData.reflect() runs (the endpoint's cold figure is a median
    too), and one pass of per-table Inspector calls."""
    engine = db.create_engine(url)
    async with engine.connect() as conn:
        reflect_runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            await conn.run_sync(lambda sync: MetaData().reflect(bind=sync))
            reflect_runs.append((time.perf_counter() - started) * 1000)
        reflect_ms = statistics.median(reflect_runs)

        def per_table(sync: object) -> None:
            inspector = inspect(sync)
            for table in inspector.get_table_names():
                inspector.get_columns(table)
                inspector.get_pk_constraint(table)
                inspector.get_foreign_keys(table)
                inspector.get_indexes(table)

        started = time.perf_counter()
        await conn.run_sync(per_table)
        inspector_ms = (time.perf_counter() - started) * 1000
    await engine.dispose()
    return reflect_ms, inspector_ms


def pg_dump_ms(url: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [pg_binary("pg_dump"), "--schema-only"],
        env=libpq_environment(url),
        check=True,
        capture_output=True,
    )
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with stack() as stack_:
        build_database(stack_, "bench_schema", args.tables)
        project_id = asyncio.run(register(stack_, "bench_schema"))
        api, port = start_api(stack_.env)
        try:
            figures = asyncio.run(endpoint(stack_, port, project_id, args.tables, args.repeat))
            reflect_ms, inspector_ms = asyncio.run(
                reflection(stack_.postgres.url("bench_schema"), 3)
            )
            dump_ms = pg_dump_ms(stack_.postgres.url("bench_schema"))
            large: dict[str, list[float]] = {}
            if args.large:
                build_database(stack_, "bench_large", args.large)
                large_id = asyncio.run(register(stack_, "bench_large"))
                large = asyncio.run(endpoint(stack_, port, large_id, args.large, 3))
                large_dump_ms = pg_dump_ms(stack_.postgres.url("bench_large"))
        finally:
            stop(api)

    cold = statistics.median(figures["cold"])
    print(
        f"{args.tables} tables x 20 columns, an index and a foreign key each ({figures['size'][0]:.1f} MiB document); ms, median (p99)"
    )
    for label in ("cold", "warm", "304", "table cold", "table warm"):
        values = figures[label]
        print(
            f"  endpoint {label:11} {statistics.median(values):9.2f}  ({percentile(values, 99):.2f})"
        )
    print(
        f"  SQLAlchemy MetaData.reflect()      {reflect_ms:9.1f}   cold is {reflect_ms / cold:.1f}x faster"
    )
    print(
        f"  SQLAlchemy Inspector, per table    {inspector_ms:9.1f}   cold is {inspector_ms / cold:.1f}x faster"
    )
    print(
        f"  pg_dump --schema-only (reference)  {dump_ms:9.1f}   ratio cold / pg_dump {cold / dump_ms:.2f}"
    )
    targets = {
        "cold <= 350 ms": cold <= 350,
        "cold >= 8x faster than reflect()": reflect_ms / cold >= 8,
        "one table < 20 ms": statistics.median(figures["table cold"]) < 20,
        "warm < 10 ms": statistics.median(figures["warm"]) < 10,
        "304 < 3 ms": statistics.median(figures["304"]) < 3,
    }
    if large:
        large_cold = statistics.median(large["cold"])
        print(
            f"{args.large} tables: endpoint cold {large_cold:.1f} ms, warm {statistics.median(large['warm']):.2f}, "
            f"304 {statistics.median(large['304']):.2f}; pg_dump --schema-only {large_dump_ms:.1f}"
        )
        targets[f"cold on {args.large} <= 1.5 s"] = large_cold <= 1500
    print(
        "targets: "
        + "; ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in targets.items())
    )


if __name__ == "__main__":
    main()

"""Masking, done in SQL inside the database being masked: which columns (the rules over
the default), what each becomes, the batches that rewrite them, and the check that no
source value is left.

Every masked value comes from a keyed hash of the value: the same input gives the same
output within one refresh (foreign keys and unique constraints still hold), and the key
(the seed) is random per refresh and never stored, so nothing can be reversed."""

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from hatchery.pgtools import ident

STRATEGIES = ("email", "hash", "null", "fixed", "keep")
# Fake values drawn from a short list may equal a source value by chance: the check
# that no source value is left skips them.
LISTS = {
    "first_name": ["Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace",
                   "Hedy", "John", "Katherine", "Linus", "Margaret", "Niklaus", "Radia", "Tim"],
    "last_name": ["Allen", "Bartik", "Cerf", "Dijkstra", "Hopper", "Johnson", "Kay", "Knuth",
                  "Lamarr", "Liskov", "Lovelace", "Perlman", "Ritchie", "Thompson", "Turing",
                  "Wirth"],
    "city": ["Springfield", "Riverton", "Fairview", "Greenville", "Franklin", "Clinton",
             "Georgetown", "Salem", "Madison", "Arlington", "Ashland", "Oxford"],
    "company": ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark",
                "Wayne", "Tyrell", "Cyberdyne", "Soylent", "Wonka"],
}  # fmt: skip
HASHED_FAKES = ("username", "phone", "text", "ipv4", "street_address")
FAKE_KINDS = frozenset([*LISTS, "name", *HASHED_FAKES])
TEXT_TYPES = ("text", "character varying", "character", "citext", "name")
SCHEMA = "hatchery_refresh"  # the check's hashes, in the scratch database only
_HASH = "hashtextextended({}, 0)"  # PostgreSQL's own 64-bit text hash: fast


@dataclass(frozen=True)
class Column:
    schema: str
    table: str
    name: str
    type: str  # format_type(): `character varying(200)`, `uuid`, ...
    base: str  # the type without modifiers, as information_schema names it
    nullable: bool

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def table_sql(self) -> str:
        return f"{ident(self.schema)}.{ident(self.table)}"


@dataclass(frozen=True)
class Masked:
    column: Column
    strategy: str
    value: str | None = None

    @property
    def verified(self) -> bool:
        kind = self.strategy.removeprefix("fake:")
        return self.strategy not in ("null", "keep") and kind not in (*LISTS, "name")


COLUMNS = text(
    """
    SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
           CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, NULL)
                ELSE format_type(a.atttypid, NULL) END,
           NOT a.attnotnull
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_type t ON t.oid = a.atttypid
    WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attgenerated = '' AND NOT c.relispartition
      AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT IN ('information_schema', :ours)
    ORDER BY n.nspname, c.relname, a.attnum
    """
)


async def columns(conn: AsyncConnection) -> list[Column]:
    rows = await conn.execute(COLUMNS, {"ours": SCHEMA})
    return [Column(*row) for row in rows]


def plan(
    found: Sequence[Column], rules: Sequence[dict[str, Any]], sensitive: Callable[[str], bool]
) -> tuple[list[Masked], list[str]]:
    """What is masked, and how: every column flagged sensitive by default, the rules over
    that. Returns the masked columns and the problems that would fail the masking."""
    by_name = {(c.qualified_table, c.name): c for c in found}
    chosen: dict[tuple[str, str], Masked] = {}
    problems: list[str] = []
    for column in found:
        if sensitive(column.name):
            strategy = "hash" if _hashable(column) else "null"
            chosen[column.qualified_table, column.name] = Masked(column, strategy)
    for rule in rules:
        where = (rule["table"], rule["column"])
        ruled = by_name.get(where)
        if ruled is None:
            problems.append(f"rule for {where[0]}.{where[1]}: no such column")
            continue
        chosen[where] = Masked(ruled, rule["strategy"], rule.get("value"))
    masked = [m for m in chosen.values() if m.strategy != "keep"]
    for m in masked:
        problem = _problem(m)
        if problem:
            problems.append(f"{m.column.qualified_table}.{m.column.name}: {problem}")
    return masked, problems


async def planned(
    conn: AsyncConnection, rules: Sequence[dict[str, Any]], sensitive: Callable[[str], bool]
) -> tuple[list[Masked], list[str]]:
    """`plan` over the database's columns, with the `fixed` values its types refuse among
    the problems (`conn` in autocommit)."""
    masked, problems = plan(await columns(conn), rules, sensitive)
    return masked, problems + await _unfit_values(conn, masked)


async def _unfit_values(conn: AsyncConnection, masked: Sequence[Masked]) -> list[str]:
    """`fixed` values that the column's type does not take (`conn` in autocommit)."""
    problems = []
    for m in masked:
        if m.strategy != "fixed":
            continue
        try:  # `conn` is in autocommit: a failure leaves nothing to roll back
            await conn.execute(
                text(f"SELECT CAST(CAST(:v AS text) AS {m.column.type})"), {"v": m.value}
            )
        except DBAPIError as exc:
            reason = str(exc.orig).splitlines()[0]
            where = f"{m.column.qualified_table}.{m.column.name}"
            problems.append(f"{where}: {m.value!r} is not a {m.column.type} ({reason})")
    return problems


def _hashable(column: Column) -> bool:
    return column.base in (*TEXT_TYPES, "uuid", "integer", "bigint", "bytea")


def _problem(masked: Masked) -> str | None:
    column, strategy = masked.column, masked.strategy
    if strategy == "null" and not column.nullable:
        return "is NOT NULL: `null` cannot apply (use hash, fixed or fake)"
    if strategy == "hash" and not _hashable(column):
        return f"`hash` does not apply to {column.type} (use null or fixed)"
    if strategy in ("email", *(f"fake:{k}" for k in FAKE_KINDS)) and column.base not in TEXT_TYPES:
        return f"`{strategy}` needs a text column, not {column.type}"
    return None


def _digest(value: str, salt: str = "") -> str:
    """The keyed hash of a value (bytea), in SQL: sha256 of seed, salt and value."""
    return f"sha256(convert_to(CAST(:seed AS text) || '{salt}' || ({value})::text, 'UTF8'))"


def _hex(value: str, salt: str = "") -> str:
    return f"encode({_digest(value, salt)}, 'hex')"


def _pick(kind: str, value: str, byte: int = 0) -> str:
    words = ", ".join("'" + w + "'" for w in LISTS[kind])
    return f"(ARRAY[{words}])[1 + get_byte({_digest(value, kind)}, {byte}) % {len(LISTS[kind])}]"


def expression(masked: Masked, index: int) -> tuple[str, dict[str, Any]]:
    """The SQL that replaces the column's value, and its parameters (the seed is bound by
    the caller). NULL stays NULL."""
    column, strategy = masked.column, masked.strategy
    value = ident(column.name)
    h = _hex(value)
    params: dict[str, Any] = {}
    if strategy == "null":
        return "NULL", params
    if strategy == "fixed":
        params[f"fixed_{index}"] = masked.value
        return f"CAST(CAST(:fixed_{index} AS text) AS {column.type})", params
    if strategy == "email":
        new = f"'user-' || left({h}, 16) || '@example.invalid'"
    elif strategy == "hash":
        new = {
            "uuid": f"md5(CAST(:seed AS text) || ({value})::text)::uuid",
            "integer": f"('x' || left({h}, 8))::bit(32)::integer",
            "bigint": f"('x' || left({h}, 16))::bit(64)::bigint",
            "bytea": _digest(value),
        }.get(column.base, h)
    else:
        new = _fake(strategy.removeprefix("fake:"), value)
    return f"CASE WHEN {value} IS NULL THEN NULL ELSE CAST({new} AS {column.type}) END", params


def _fake(kind: str, value: str) -> str:
    h = _hex(value, kind)
    if kind in LISTS:
        return _pick(kind, value)
    return {
        "name": f"{_pick('first_name', value)} || ' ' || {_pick('last_name', value, 1)}",
        "username": f"'user_' || left({h}, 12)",
        "phone": f"'+1-555-' || lpad((('x' || left({h}, 8))::bit(32)::bigint % 10000000)::text, "
        "7, '0')",
        "text": f"'masked ' || left({h}, 24)",
        "ipv4": f"'10.' || get_byte({_digest(value, kind)}, 0) || '.' || "
        f"get_byte({_digest(value, kind)}, 1) || '.' || get_byte({_digest(value, kind)}, 2)",
        "street_address": f"(('x' || left({h}, 4))::bit(16)::integer % 999 + 1) || ' ' || "
        f"{_pick('last_name', value)} || ' Street'",
    }[kind]


def new_seed() -> str:
    return secrets.token_hex(32)


LAST_BLOCK = 2**32 - 1  # past any page a table can have
PAGES = "SELECT pg_relation_size(CAST(:t AS regclass)) / current_setting('block_size')::int"
Progress = Callable[[str, int, int], Awaitable[None]]


async def remember_sources(conn: AsyncConnection, masked: Sequence[Masked]) -> None:
    """Before masking: the hash of every source value of each checked column (one scan
    of each table), for `leftovers` to look for afterwards. A 64-bit hash: two values
    that collide can only make the check fail a refresh that was fine, never pass one
    that was not."""
    await forget_sources(conn)
    await conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    by_table: dict[str, list[str]] = {}
    params: dict[str, Any] = {}
    for i, m in enumerate(masked):
        if not m.verified:
            continue
        value = f"{ident(m.column.name)}::text"
        if m.strategy == "fixed":  # the fixed value itself may be a source value
            params[f"fixed_{i}"] = m.value
            value = f"NULLIF({value}, CAST(:fixed_{i} AS text))"
        by_table.setdefault(m.column.table_sql, []).append(f"{_HASH.format(value)} AS c{i}")
    for k, (table, hashes) in enumerate(by_table.items()):
        await conn.execute(
            text(f"CREATE UNLOGGED TABLE {SCHEMA}.t{k} AS SELECT {', '.join(hashes)} FROM {table}"),
            params,
        )
        await conn.execute(text(f"ANALYZE {SCHEMA}.t{k}"))  # for a hash join in `leftovers`


def _source_table(masked: Sequence[Masked], index: int) -> str:
    """Where remember_sources put the hashes of column `index`."""
    tables = list(dict.fromkeys(m.column.table_sql for m in masked if m.verified))
    return f"{SCHEMA}.t{tables.index(masked[index].column.table_sql)}"


async def forget_sources(conn: AsyncConnection) -> None:
    await conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))


async def mask(
    conns: Sequence[AsyncConnection],
    masked: Sequence[Masked],
    seed: str,
    progress: Progress,
    batch_pages: int,
) -> dict[str, Any]:
    """Rewrite the masked columns, table by table, in batches of pages spread over
    `conns` (in autocommit: each batch one statement that commits on its own). A row is
    rewritten only if it was written before masking began (its xmin precedes the
    transaction id taken then): a row's new version may land anywhere in the table, and
    is never masked twice."""
    by_table: dict[str, list[tuple[int, Masked]]] = {}
    for i, m in enumerate(masked):
        by_table.setdefault(m.column.table_sql, []).append((i, m))
    started = time.monotonic()
    rows = 0
    began = int(await conns[0].scalar(text("SELECT txid_current() % 4294967296")) or 0)
    for table, members in by_table.items():
        sets, params = [], {"seed": seed, "began": str(began)}
        for i, m in members:
            sql, extra = expression(m, i)
            sets.append(f"{ident(m.column.name)} = {sql}")
            params.update(extra)
        update = (
            f"UPDATE {table} SET {', '.join(sets)} "
            "WHERE ctid >= :first AND ctid < :last "
            "AND age(xmin) > age(CAST(CAST(:began AS text) AS xid))"
        )
        end = int(await conns[0].scalar(text(PAGES), {"t": table}) or 0)
        # The pages there were, a batch at a time; then what lies past them (a partitioned
        # table's rows: its parent has no pages).
        batches = [
            ((first, 0), (first + batch_pages, 0), min(first + batch_pages, end))
            for first in range(0, end, batch_pages)
        ]
        batches.append(((end, 0), (LAST_BLOCK, 0), end))
        rows += await _in_batches(conns, text(update), params, batches, table, end, progress)
    seconds = time.monotonic() - started
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds) if seconds > 0 else None,
    }


async def _in_batches(
    conns: Sequence[AsyncConnection],
    update: TextClause,
    params: dict[str, Any],
    batches: list[tuple[tuple[int, int], tuple[int, int], int]],
    table: str,
    pages: int,
    progress: Progress,
) -> int:
    """Run `update` once per batch (its first and last ctid), each connection taking
    the next batch as it is free; the rows changed."""
    pending = list(batches)

    async def work(conn: AsyncConnection) -> int:
        changed = 0
        while pending:
            first, last, reached = pending.pop(0)
            found = await conn.execute(update, {**params, "first": first, "last": last})
            changed += found.rowcount
            await progress(table, reached, pages)
        return changed

    return sum(await asyncio.gather(*(work(conn) for conn in conns)))


async def leftovers(conn: AsyncConnection, masked: Sequence[Masked]) -> dict[str, int]:
    """For every checked column, how many of its values equal a source value (by hash,
    inside the database); and for `null` ones, how many are not null."""
    found: dict[str, int] = {}
    for i, m in enumerate(masked):
        value = ident(m.column.name)
        where = f"{m.column.qualified_table}.{m.column.name}"
        if m.strategy == "null":
            query = f"SELECT count(*) FROM {m.column.table_sql} WHERE {value} IS NOT NULL"
        elif m.verified:
            query = (
                f"SELECT count(*) FROM {m.column.table_sql} WHERE EXISTS (SELECT 1 FROM "
                f"{_source_table(masked, i)} s WHERE s.c{i} = {_HASH.format(value + '::text')})"
            )
        else:
            continue
        found[where] = int(await conn.scalar(text(query)) or 0)
    return found


async def tables(conn: AsyncConnection) -> dict[str, str]:
    """Every table (partitioned ones, not their partitions): `schema.table` to its quoted
    name."""
    found = await conn.execute(
        text(
            "SELECT n.nspname || '.' || c.relname, format('%I.%I', n.nspname, c.relname) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT IN ('information_schema', :ours) "
            "ORDER BY 1"
        ),
        {"ours": SCHEMA},
    )
    return dict(found.tuples().all())


async def row_counts(conn: AsyncConnection, only: Collection[str] | None = None) -> dict[str, int]:
    """Exact row counts of every table (partitions counted in their parent), or of those
    named in `only` (`schema.table`)."""
    counts = {}
    for name, quoted in (await tables(conn)).items():
        if only is None or name in only:
            counts[name] = int(await conn.scalar(text(f"SELECT count(*) FROM {quoted}")) or 0)
    return counts

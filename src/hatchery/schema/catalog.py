"""Bulk catalog queries: a fixed handful per introspection, never one per table.

Every query starts from the same `rel` CTE (the relations in scope) and reads pg_catalog
directly: no information_schema views, no correlated subqueries. Functions that render
SQL (pg_get_expr, pg_get_constraintdef, pg_get_viewdef) run only for the rows that need
them.
"""

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

VERSION_TABLE = "alembic_version"
KINDS = {
    "r": "table",
    "p": "partitioned_table",
    "v": "view",
    "m": "materialized_view",
    "f": "foreign_table",
}
PARTS = ("columns", "constraints", "indexes", "definitions", "policies", "partitions", "stats")
DEFAULT_PARTS = frozenset(PARTS) - {"stats"}

USER_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
"""

# The catalog modification counters of this database: O(1), and they move with every
# DDL once PostgreSQL has published the DDL session's statistics (at its end, and at
# most ten seconds after it goes idle).
PROBE = text(
    """
    SELECT sum(pg_stat_get_tuples_inserted(c) + pg_stat_get_tuples_updated(c)
               + pg_stat_get_tuples_deleted(c))::text
    FROM unnest(ARRAY['pg_class', 'pg_attribute', 'pg_attrdef', 'pg_constraint', 'pg_index',
                      'pg_description', 'pg_type', 'pg_enum', 'pg_namespace', 'pg_policy',
                      'pg_sequence', 'pg_inherits', 'pg_partitioned_table', 'pg_rewrite',
                      'pg_am']::regclass[]) AS c
    """
)

# Exact, and costlier (tens of milliseconds on a thousand tables): what every
# schema-bearing catalog row looks like now, as row count and sum of row versions.
_CHECKED_CATALOGS = {
    "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace": USER_SCHEMAS,
    "pg_attribute c": "c.attrelid >= 16384",
    "pg_attrdef c": "true",
    "pg_constraint c": "true",
    "pg_index c": "true",
    "pg_description c": "true",
    "pg_type c": "c.oid >= 16384",
    "pg_enum c": "true",
    "pg_namespace c": "true",
    "pg_policy c": "true",
    "pg_sequence c": "true",
    "pg_inherits c": "true",
    "pg_rewrite c": "c.oid >= 16384",
}
CHECKSUM = text(
    "SELECT md5(string_agg(part, ',' ORDER BY part)) FROM ("
    + " UNION ALL ".join(
        f"SELECT '{source.split()[0]}:' || count(*) || ':' "
        f"|| coalesce(sum(c.xmin::text::bigint), 0) AS part FROM {source} WHERE {where}"
        for source, where in _CHECKED_CATALOGS.items()
    )
    + ") parts"
)


# The same, for one relation only, through the catalogs' indexes.
TABLE_CHECKSUM = text(
    "SELECT md5(string_agg(part, ',' ORDER BY part)) FROM ("
    + " UNION ALL ".join(
        f"SELECT '{name}:' || count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) AS part "
        f"FROM {name} WHERE {column} = :relation"
        for name, column in {
            "pg_class": "oid",
            "pg_attribute": "attrelid",
            "pg_attrdef": "adrelid",
            "pg_constraint": "conrelid",
            "pg_index": "indrelid",
            "pg_description": "objoid",
            "pg_policy": "polrelid",
            "pg_inherits": "inhrelid",
        }.items()
    )
    + ") parts"
)


@dataclass(frozen=True)
class Scope:
    """Which relations an introspection covers."""

    schemas: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    relation: int | None = None  # one table, by oid
    # The project's own version table is its migration tool's, not its schema.
    version_table: str = VERSION_TABLE


def _rel_cte(scope: Scope) -> tuple[str, dict[str, Any]]:
    where = [
        USER_SCHEMAS,
        "c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        "c.oid IS DISTINCT FROM to_regclass(:version_table)",
    ]
    params: dict[str, Any] = {"version_table": scope.version_table}
    if scope.relation is not None:
        where.append("c.oid = :relation")
        params["relation"] = scope.relation
    if scope.schemas:
        where.append("n.nspname = ANY(:schemas)")
        params["schemas"] = list(scope.schemas)
    if scope.kinds:
        codes = [code for code, kind in KINDS.items() if kind in scope.kinds]
        where.append("c.relkind::text = ANY(:kinds)")
        params["kinds"] = codes
    cte = f"""
        WITH rel AS (
            SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {" AND ".join(where)}
        )
    """
    return cte, params


def _relations_sql(parts: frozenset[str]) -> str:
    definition = (
        "CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END"
        if "definitions" in parts
        else "NULL"
    )
    partitions = "partitions" in parts
    partition_key = "CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END"
    partition_bound = "CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END"
    stats = (
        "c.reltuples::bigint, pg_total_relation_size(c.oid)"
        if "stats" in parts
        else "NULL::bigint, NULL::bigint"
    )
    return f"""
        SELECT rel.oid, rel.schema, rel.name, rel.relkind, d.description,
               c.relrowsecurity, c.relforcerowsecurity,
               {definition},
               {partition_key if partitions else "NULL"},
               {partition_bound if partitions else "NULL"},
               pn.nspname, p.relname,
               {stats}
        FROM rel
        JOIN pg_class c ON c.oid = rel.oid
        LEFT JOIN pg_description d
            ON d.objoid = rel.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
        LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = rel.oid
        LEFT JOIN pg_class p ON p.oid = i.inhparent
        LEFT JOIN pg_namespace pn ON pn.oid = p.relnamespace
        ORDER BY rel.schema, rel.name
    """


COLUMNS_SQL = """
    SELECT a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull,
           CASE WHEN ad.oid IS NOT NULL THEN pg_get_expr(ad.adbin, ad.adrelid, true) END,
           a.attidentity::text, a.attgenerated::text
    FROM rel
    JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
"""

# Thousands of columns share a few types: each distinct (type, modifier) is described once.
COLUMN_TYPES_SQL = """
    SELECT x.typid, x.typmod, format_type(x.typid, x.typmod),
           t.typtype::text, t.typcategory::text, et.typtype::text,
           tn.nspname || '.' || t.typname, etn.nspname || '.' || et.typname
    FROM unnest(CAST(:typids AS oid[]), CAST(:typmods AS int[])) AS x(typid, typmod)
    JOIN pg_type t ON t.oid = x.typid
    JOIN pg_namespace tn ON tn.oid = t.typnamespace
    LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
    LEFT JOIN pg_namespace etn ON etn.oid = et.typnamespace
"""

# Few rows: joined in Python rather than merged (and sorted) against every column.
COLUMN_COMMENTS_SQL = """
    SELECT d.objoid, d.objsubid, d.description
    FROM rel JOIN pg_description d
        ON d.objoid = rel.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0
"""

CONSTRAINTS_SQL = """
    SELECT co.conrelid, co.conname, co.contype::text, co.conkey, co.confkey,
           fn.nspname, f.relname, co.confupdtype::text, co.confdeltype::text, co.condeferrable,
           CASE WHEN co.contype IN ('c', 'x') THEN pg_get_constraintdef(co.oid, true) END,
           co.confrelid
    FROM rel
    JOIN pg_constraint co ON co.conrelid = rel.oid
    LEFT JOIN pg_class f ON f.oid = co.confrelid
    LEFT JOIN pg_namespace fn ON fn.oid = f.relnamespace
    ORDER BY co.conrelid, co.conname
"""

INDEXES_SQL = """
    SELECT i.indrelid, ic.relname, am.amname, i.indisunique, i.indisprimary, k.n,
           i.indkey[k.n - 1],
           CASE WHEN i.indkey[k.n - 1] = 0 THEN pg_get_indexdef(i.indexrelid, k.n, true) END,
           CASE WHEN k.n = 1 AND i.indpred IS NOT NULL
                THEN pg_get_expr(i.indpred, i.indrelid, true) END,
           k.n > i.indnkeyatts
    FROM rel
    JOIN pg_index i ON i.indrelid = rel.oid
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam
    CROSS JOIN LATERAL generate_series(1, i.indnatts) AS k(n)
    ORDER BY i.indrelid, ic.relname, k.n
"""

POLICIES_SQL = """
    SELECT p.polrelid, p.polname, p.polcmd::text, p.polpermissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
                 FROM unnest(p.polroles) AS r),
           pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
    FROM rel JOIN pg_policy p ON p.polrelid = rel.oid
    ORDER BY p.polrelid, p.polname
"""

TYPES_SQL = f"""
    SELECT t.oid, n.nspname, t.typname, t.typtype::text, d.description,
           CASE WHEN t.typtype = 'e'
                THEN ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid
                           ORDER BY e.enumsortorder) END,
           CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
           t.typnotnull, t.typdefault
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    LEFT JOIN pg_description d ON d.objoid = t.oid AND d.classoid = 'pg_type'::regclass
    WHERE t.typtype IN ('e', 'd') AND {USER_SCHEMAS} AND (:schemas_all OR n.nspname = ANY(:schemas))
    ORDER BY n.nspname, t.typname
"""

DOMAIN_CHECKS_SQL = f"""
    SELECT co.contypid, co.conname, pg_get_constraintdef(co.oid, true)
    FROM pg_constraint co JOIN pg_type t ON t.oid = co.contypid
    JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE co.contypid <> 0 AND {USER_SCHEMAS}
    ORDER BY co.contypid, co.conname
"""

SEQUENCES_SQL = f"""
    SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
           s.seqmin, s.seqmax, s.seqcycle, s.seqcache, on_.nspname, oc.relname, oa.attname
    FROM pg_sequence s
    JOIN pg_class c ON c.oid = s.seqrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_depend dep ON dep.classid = 'pg_class'::regclass AND dep.objid = s.seqrelid
        AND dep.refclassid = 'pg_class'::regclass AND dep.deptype IN ('a', 'i')
    LEFT JOIN pg_class oc ON oc.oid = dep.refobjid
    LEFT JOIN pg_namespace on_ ON on_.oid = oc.relnamespace
    LEFT JOIN pg_attribute oa ON oa.attrelid = dep.refobjid AND oa.attnum = dep.refobjsubid
    WHERE {USER_SCHEMAS} AND (:schemas_all OR n.nspname = ANY(:schemas))
    ORDER BY n.nspname, c.relname
"""

SCHEMAS_SQL = f"""
    SELECT n.nspname, d.description
    FROM pg_namespace n
    LEFT JOIN pg_description d ON d.objoid = n.oid AND d.classoid = 'pg_namespace'::regclass
    WHERE {USER_SCHEMAS} AND (:schemas_all OR n.nspname = ANY(:schemas))
    ORDER BY n.nspname
"""

ACTIONS = {"a": "no action", "r": "restrict", "c": "cascade", "n": "set null", "d": "set default"}
IDENTITY = {"a": "always", "d": "by_default"}
KINDS_OF_CHECK = {"c": "check", "x": "exclusion"}
POLICY_COMMANDS = {"*": "all", "r": "select", "a": "insert", "w": "update", "d": "delete"}


@dataclass(frozen=True)
class Masking:
    patterns: tuple[str, ...]
    hide: bool

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        return re.compile("|".join(self.patterns), re.IGNORECASE) if self.patterns else None

    def sensitive(self, column: str) -> bool:
        return self._pattern is not None and self._pattern.search(column) is not None


async def introspect(
    conn: AsyncConnection, scope: Scope, parts: frozenset[str], masking: Masking
) -> dict[str, Any]:
    """The schema in scope as plain data shaped like `schemas.SchemaDocument`."""
    cte, params = _rel_cte(scope)
    relations = (await conn.execute(text(cte + _relations_sql(parts)), params)).all()
    tables: dict[int, dict[str, Any]] = {}
    for (oid, schema, name, relkind, comment, rls, force_rls, definition, partkey, bound,
         parent_schema, parent, row_estimate, total_bytes) in relations:  # fmt: skip
        table: dict[str, Any] = {
            "schema": schema,
            "name": name,
            "kind": KINDS[relkind],
            "comment": comment,
            "row_level_security": {"enabled": rls, "forced": force_rls},
        }
        if "definitions" in parts:
            table["definition"] = definition
        if "partitions" in parts:
            table["partitioning"] = {
                "key": partkey,
                "parent": f"{parent_schema}.{parent}" if parent else None,
                "bound": bound,
            }
        if "stats" in parts:
            table["stats"] = {"row_estimate": max(row_estimate, 0), "total_bytes": total_bytes}
        tables[oid] = table

    attnames: dict[int, dict[int, str]] = defaultdict(dict)
    if tables and ({"columns", "constraints", "indexes"} & parts):
        await _columns(conn, cte, params, tables, attnames, parts, masking)
    if tables and "constraints" in parts:
        await _constraints(conn, cte, params, tables, attnames)
    if tables and "indexes" in parts:
        await _indexes(conn, cte, params, tables, attnames)
    if tables and "policies" in parts:
        await _policies(conn, cte, params, tables)

    document: dict[str, Any] = {"tables": list(tables.values())}
    if scope.relation is None:
        schema_params = {"schemas_all": not scope.schemas, "schemas": list(scope.schemas)}
        document["schemas"] = [
            {"name": name, "comment": comment}
            for name, comment in (await conn.execute(text(SCHEMAS_SQL), schema_params)).all()
        ]
        document.update(await _types(conn, schema_params))
        document["sequences"] = [
            {
                "schema": schema, "name": name, "type": type_, "start": start,
                "increment": increment, "min": minimum, "max": maximum, "cycle": cycle,
                "cache": cache,
                "owned_by": f"{owner_schema}.{owner}.{column}" if owner else None,
            }
            for (schema, name, type_, start, increment, minimum, maximum, cycle, cache,
                 owner_schema, owner, column) in (
                await conn.execute(text(SEQUENCES_SQL), schema_params)
            ).all()
        ]  # fmt: skip
    return document


async def _columns(
    conn: AsyncConnection,
    cte: str,
    params: dict[str, Any],
    tables: dict[int, dict[str, Any]],
    attnames: dict[int, dict[int, str]],
    parts: frozenset[str],
    masking: Masking,
) -> None:
    listing = "columns" in parts
    comments: dict[tuple[int, int], str] = {}
    if listing:
        for table in tables.values():
            table["columns"] = []
        described = await conn.execute(text(cte + COLUMN_COMMENTS_SQL), params)
        comments = {(relid, attnum): comment for relid, attnum, comment in described.all()}
    rows = (await conn.execute(text(cte + COLUMNS_SQL), params)).all()
    pairs = sorted({(row[3], row[4]) for row in rows})
    types = {
        (typid, typmod): described
        for typid, typmod, *described in (
            await conn.execute(
                text(COLUMN_TYPES_SQL),
                {"typids": [p[0] for p in pairs], "typmods": [p[1] for p in pairs]},
            )
        ).all()
    }
    for (relid, attnum, name, typid, typmod, notnull, default, identity,
         generated) in sorted(rows, key=_by_position):  # fmt: skip
        attnames[relid][attnum] = name
        if not listing:
            continue
        sensitive = masking.sensitive(name)
        if sensitive and masking.hide:
            continue
        type_, typtype, category, elemtype, typname, elemname = types[(typid, typmod)]
        is_array = category == "A"
        enum = typname if typtype == "e" else (elemname if is_array and elemtype == "e" else None)
        tables[relid]["columns"].append(
            {
                "position": attnum,
                "name": name,
                "type": type_,
                "nullable": not notnull,
                "default": None if sensitive or generated else default,
                "identity": IDENTITY.get(identity),
                "generated": default if generated == "s" else None,
                "is_array": is_array,
                "enum": enum,
                "domain": typname if typtype == "d" else None,
                "comment": None if sensitive else comments.get((relid, attnum)),
                "sensitive": sensitive,
            }
        )


def _by_position(row: Any) -> tuple[int, int]:
    return row[0], row[1]


def _names(attnames: dict[int, str], numbers: list[int] | None) -> list[str]:
    return [attnames.get(n, str(n)) for n in numbers or []]


async def _constraints(
    conn: AsyncConnection,
    cte: str,
    params: dict[str, Any],
    tables: dict[int, dict[str, Any]],
    attnames: dict[int, dict[int, str]],
) -> None:
    for table in tables.values():
        table.update(primary_key=None, foreign_keys=[], unique_constraints=[], check_constraints=[])
    foreign: list[tuple[dict[str, Any], int, list[int]]] = []
    rows = (await conn.execute(text(cte + CONSTRAINTS_SQL), params)).all()
    for (relid, name, kind, keys, fkeys, fschema, fname, on_update, on_delete, deferrable,
         definition, frelid) in rows:  # fmt: skip
        table = tables[relid]
        columns = _names(attnames[relid], keys)
        if kind == "p":
            table["primary_key"] = {"name": name, "columns": columns}
        elif kind == "u":
            table["unique_constraints"].append(
                {"name": name, "columns": columns, "deferrable": deferrable}
            )
        elif kind in ("c", "x"):
            table["check_constraints"].append(
                {
                    "name": name,
                    "kind": "check" if kind == "c" else "exclusion",
                    "definition": definition,
                }
            )
        elif kind == "f":
            fk = {
                "name": name,
                "columns": columns,
                "referenced_table": f"{fschema}.{fname}",
                "referenced_columns": [],
                "on_update": ACTIONS[on_update],
                "on_delete": ACTIONS[on_delete],
                "deferrable": deferrable,
            }
            table["foreign_keys"].append(fk)
            foreign.append((fk, frelid, fkeys))
    missing = {frelid for _, frelid, _ in foreign if frelid not in attnames}
    if missing:
        # Referenced tables outside the scope (one table, a schema filter): their names.
        referenced = await conn.execute(
            text(
                "SELECT attrelid, attnum, attname FROM pg_attribute "
                "WHERE attrelid = ANY(:relations) AND attnum > 0"
            ),
            {"relations": list(missing)},
        )
        for relid, attnum, name in referenced.all():
            attnames[relid][attnum] = name
    for fk, frelid, fkeys in foreign:
        fk["referenced_columns"] = _names(attnames[frelid], fkeys)


async def _indexes(
    conn: AsyncConnection,
    cte: str,
    params: dict[str, Any],
    tables: dict[int, dict[str, Any]],
    attnames: dict[int, dict[int, str]],
) -> None:
    for table in tables.values():
        table["indexes"] = []
    current: dict[str, Any] | None = None
    for (relid, name, method, unique, primary, position, attnum, expression, predicate,
         included) in (await conn.execute(text(cte + INDEXES_SQL), params)).all():  # fmt: skip
        if position == 1:
            current = {
                "name": name, "method": method, "unique": unique, "primary": primary,
                "columns": [], "include": [], "predicate": predicate,
            }  # fmt: skip
            tables[relid]["indexes"].append(current)
        assert current is not None
        element = expression if attnum == 0 else attnames[relid].get(attnum, str(attnum))
        current["include" if included else "columns"].append(element)


async def _policies(
    conn: AsyncConnection, cte: str, params: dict[str, Any], tables: dict[int, dict[str, Any]]
) -> None:
    for table in tables.values():
        table["policies"] = []
    for relid, name, command, permissive, roles, using, check in (
        await conn.execute(text(cte + POLICIES_SQL), params)
    ).all():
        tables[relid]["policies"].append(
            {
                "name": name,
                "command": POLICY_COMMANDS[command],
                "permissive": permissive,
                "roles": list(roles),
                "using": using,
                "with_check": check,
            }
        )


async def _types(conn: AsyncConnection, schema_params: dict[str, Any]) -> dict[str, Any]:
    checks: dict[int, list[dict[str, str]]] = defaultdict(list)
    for typid, name, definition in (await conn.execute(text(DOMAIN_CHECKS_SQL))).all():
        checks[typid].append({"name": name, "definition": definition})
    enums, domains = [], []
    for oid, schema, name, typtype, comment, labels, base, notnull, default in (
        await conn.execute(text(TYPES_SQL), schema_params)
    ).all():
        if typtype == "e":
            enums.append(
                {"schema": schema, "name": name, "labels": list(labels), "comment": comment}
            )
        else:
            domains.append(
                {
                    "schema": schema, "name": name, "base_type": base, "nullable": not notnull,
                    "default": default, "checks": checks.get(oid, []), "comment": comment,
                }
            )  # fmt: skip
    return {"enums": enums, "domains": domains}


async def revision(conn: AsyncConnection, version_table: str) -> str | None:
    """The Alembic revision the database is at, if it has its version table."""
    relation = await conn.scalar(text("SELECT to_regclass(:t)::text"), {"t": version_table})
    if relation is None:
        return None
    value = await conn.scalar(text(f"SELECT max(version_num) FROM {relation}"))
    return str(value) if value is not None else None


async def find_relation(
    conn: AsyncConnection, schema: str, name: str, version_table: str = VERSION_TABLE
) -> int | None:
    found = await conn.scalar(
        text(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = :name "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND c.oid IS DISTINCT FROM to_regclass(:version_table) "
            f"AND {USER_SCHEMAS}"  # the system catalogs are no table of the project's
        ),
        {"schema": schema, "name": name, "version_table": version_table},
    )
    return int(found) if found is not None else None

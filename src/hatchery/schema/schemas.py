"""The schema API's types: every object is a model, so generated clients get real types."""

from typing import Literal

from pydantic import BaseModel, Field

TableKind = Literal["table", "partitioned_table", "view", "materialized_view", "foreign_table"]
Action = Literal["no action", "restrict", "cascade", "set null", "set default"]


class Column(BaseModel):
    position: int
    name: str
    type: str = Field(
        description="As PostgreSQL prints it (format_type), e.g. `character varying(40)[]`."
    )
    nullable: bool
    default: str | None = Field(description="Default expression; omitted for sensitive columns.")
    identity: Literal["always", "by_default"] | None
    generated: str | None = Field(description="Expression of a stored generated column.")
    is_array: bool
    enum: str | None = Field(
        description="`schema.type` of the enum it holds (or holds an array of)."
    )
    domain: str | None = Field(description="`schema.type` of its domain.")
    comment: str | None
    sensitive: bool = Field(
        description="Its name matches a sensitive pattern: default and comment hidden."
    )


class PrimaryKey(BaseModel):
    name: str
    columns: list[str]


class ForeignKey(BaseModel):
    name: str
    columns: list[str]
    referenced_table: str = Field(description="`schema.table`")
    referenced_columns: list[str]
    on_update: Action
    on_delete: Action
    deferrable: bool


class UniqueConstraint(BaseModel):
    name: str
    columns: list[str]
    deferrable: bool


class CheckConstraint(BaseModel):
    name: str
    kind: Literal["check", "exclusion"]
    definition: str


class Index(BaseModel):
    name: str
    method: str = Field(description="Access method: btree, hash, gin, gist, brin, ...")
    unique: bool
    primary: bool
    columns: list[str] = Field(
        description="Column names, or expressions as PostgreSQL prints them."
    )
    include: list[str] = Field(description="Non-key columns (INCLUDE).")
    predicate: str | None = Field(description="The WHERE of a partial index.")


class Partitioning(BaseModel):
    key: str | None = Field(
        description="Partition key of a partitioned table, e.g. `RANGE (created_at)`."
    )
    parent: str | None = Field(description="`schema.table` this partition belongs to.")
    bound: str | None = Field(description="Partition bound, e.g. `FOR VALUES FROM (...) TO (...)`.")


class RowLevelSecurity(BaseModel):
    enabled: bool
    forced: bool


class Policy(BaseModel):
    name: str
    command: Literal["all", "select", "insert", "update", "delete"]
    permissive: bool
    roles: list[str]
    using: str | None
    with_check: str | None


class TableStats(BaseModel):
    row_estimate: int = Field(description="The planner's estimate (pg_class.reltuples).")
    total_bytes: int | None = Field(description="Table, indexes and TOAST.")


class Table(BaseModel):
    schema_: str = Field(alias="schema", serialization_alias="schema")
    name: str
    kind: TableKind
    comment: str | None
    row_level_security: RowLevelSecurity
    columns: list[Column] | None = None
    primary_key: PrimaryKey | None = None
    foreign_keys: list[ForeignKey] | None = None
    unique_constraints: list[UniqueConstraint] | None = None
    check_constraints: list[CheckConstraint] | None = None
    indexes: list[Index] | None = None
    policies: list[Policy] | None = None
    partitioning: Partitioning | None = None
    definition: str | None = Field(
        default=None, description="Query of a view or materialized view."
    )
    stats: TableStats | None = Field(default=None, description="Only with `include=stats`.")


class SchemaInfo(BaseModel):
    name: str
    comment: str | None


class EnumType(BaseModel):
    schema_: str = Field(alias="schema", serialization_alias="schema")
    name: str
    labels: list[str]
    comment: str | None


class DomainCheck(BaseModel):
    name: str
    definition: str


class DomainType(BaseModel):
    schema_: str = Field(alias="schema", serialization_alias="schema")
    name: str
    base_type: str
    nullable: bool
    default: str | None
    checks: list[DomainCheck]
    comment: str | None


class Sequence(BaseModel):
    schema_: str = Field(alias="schema", serialization_alias="schema")
    name: str
    type: str
    start: int
    increment: int
    min: int
    max: int
    cycle: bool
    cache: int
    owned_by: str | None = Field(description="`schema.table.column` it belongs to.")


class SchemaDocument(BaseModel):
    environment: str
    revision: str | None = Field(description="The environment's current Alembic revision.")
    fingerprint: str = Field(description="Changes with any change to the schema; also the ETag.")
    schemas: list[SchemaInfo]
    tables: list[Table]
    enums: list[EnumType]
    domains: list[DomainType]
    sequences: list[Sequence]


class TableDocument(BaseModel):
    environment: str
    revision: str | None
    fingerprint: str
    table: Table

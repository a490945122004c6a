"""A project's revision history at one commit, as its child inspected it: plain data,
walked here without ever loading a revision file. Kept in Redis by commit (a commit's
files never change), so the api answers history and validates targets without a child."""

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text

from hatchery import db, pgtools

BASE = "base"
HEAD = "head"
CACHE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: str
    sha256: str
    downgradable: bool
    transactional: bool


@dataclass(frozen=True)
class History:
    heads: tuple[str, ...]
    revisions: tuple[Revision, ...]  # oldest first

    @classmethod
    def from_child(cls, found: dict[str, Any]) -> "History":
        return cls(
            heads=tuple(found["heads"]),
            revisions=tuple(
                Revision(**{**r, "down_revisions": tuple(r["down_revisions"])})
                for r in found["revisions"]
            ),
        )

    def get(self, wanted: str) -> Revision | None:
        """A revision by its id or an unambiguous prefix of it, as Alembic takes them."""
        exact = [r for r in self.revisions if r.revision == wanted]
        if exact:
            return exact[0]
        matches = [r for r in self.revisions if r.revision.startswith(wanted)]
        return matches[0] if len(matches) == 1 and len(wanted) >= 4 else None

    def resolve(self, wanted: str) -> str | None:
        if wanted == HEAD:
            return self.heads[0] if len(self.heads) == 1 else None
        found = self.get(wanted)
        return found.revision if found else None

    def ancestors(self, revision: str | None) -> set[str]:
        """The revision and every revision it stands on."""
        by_id = {r.revision: r for r in self.revisions}
        seen: set[str] = set()
        stack = [revision] if revision and revision != BASE else []
        while stack:
            current = stack.pop()
            if current in seen or current not in by_id:
                continue
            seen.add(current)
            stack.extend(by_id[current].down_revisions)
        return seen

    def upgrade_path(self, current: str | None, target: str) -> list[str]:
        """What an upgrade from `current` to `target` applies, oldest first."""
        pending = self.ancestors(target) - self.ancestors(current)
        return [r.revision for r in self.revisions if r.revision in pending]

    def downgrade_path(self, current: str, target: str | None) -> list[str]:
        """What a downgrade from `current` to `target` reverts, newest first."""
        reverted = self.ancestors(current) - self.ancestors(target)
        return [r.revision for r in reversed(self.revisions) if r.revision in reverted]

    def is_ancestor(self, earlier: str | None, later: str) -> bool:
        return earlier is None or earlier == BASE or earlier in self.ancestors(later)

    def to_json(self) -> str:
        return json.dumps({"heads": self.heads, "revisions": [asdict(r) for r in self.revisions]})


def _cache_key(project_id: str, commit: str, site_digest: str) -> str:
    return f"hatchery:history:{project_id}:{commit}:{site_digest}"


def site_digest(alembic_ini: str | None, migration_settings: dict[str, Any] | None) -> str:
    """What, besides the commit, decides what a history looks like: where alembic.ini is
    and how the project's migrations run."""
    described = json.dumps([alembic_ini, migration_settings or {}], sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


async def remember(
    redis: Redis, project_id: str, commit: str, digest: str, history: History
) -> None:
    await redis.set(_cache_key(project_id, commit, digest), history.to_json(), ex=CACHE_SECONDS)


async def recall(redis: Redis, project_id: str, commit: str, digest: str) -> History | None:
    found = await redis.get(_cache_key(project_id, commit, digest))
    return History.from_child(json.loads(found)) if found else None


async def current(database_url: str, version_table: str | None) -> str | None:
    """The revision in the project's version table (None when it has none). Plain SQL:
    reading a table runs none of the project's code."""
    table = pgtools.quoted_version_table(version_table)
    async with db.connection(database_url, connect_args={"timeout": 10}) as conn:
        relation = await conn.scalar(text("SELECT to_regclass(:name)"), {"name": table})
        if relation is None:
            return None
        found = await conn.scalar(text(f"SELECT version_num FROM {table} LIMIT 1"))  # noqa: S608
        return str(found) if found is not None else None

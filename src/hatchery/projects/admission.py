"""What an adoption may point Hatchery at.

Whoever holds a `projects:write` key chooses an adopted project's repository URL and
database URLs, so both are checked before anything is stored and again in the worker
before it connects: repositories by scheme and place, databases by host, and once
connected, by which cluster they live on.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import text

from hatchery import git
from hatchery.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata services (AWS, its IPv6 one, Alibaba); link-local covers GCP
# and Azure's.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
MAINTENANCE_DATABASES = frozenset({"postgres", "template0", "template1"})
ALLOWED_OPTIONS = frozenset({"ssl", "sslmode", "application_name"})
RESOLVE_SECONDS = 5.0
CLUSTER = text("SELECT (pg_control_system()).system_identifier")


class Refused(ValueError):
    """Not something Hatchery may adopt; the message says why, and reveals nothing else."""


def check_repository(url: str, settings: Settings) -> str:
    try:
        return git.check_url(
            url, settings.repository_file_root, [settings.repositories_dir, settings.backups_dir]
        )
    except git.UnsafeRepository as exc:
        raise Refused(str(exc)) from None


async def check_database(url: URL, settings: Settings) -> None:
    """Refuse a database the operator does not allow: outside the allowed hosts, on a
    link-local, metadata or (other than Hatchery's own PostgreSQL) loopback address, or
    the control database or a maintenance database of Hatchery's own servers."""
    if not settings.adoption_enabled:
        raise Refused("adopting existing databases is disabled on this server")
    host, port = url.host, url.port or 5432
    if not host or host.startswith("/") or set(url.query) - ALLOWED_OPTIONS:
        raise Refused("name a host and port; no socket paths or options other than ssl")
    addresses = await _resolve(host, port)
    allowed = settings.adoption_allowed_hosts
    if allowed and not _listed(host, addresses, allowed):
        raise Refused(f"{host} is not among the hosts this server adopts databases from")
    own = await _own_servers(settings)
    for address in addresses:
        if address in METADATA or address.is_link_local:
            raise Refused("link-local and metadata addresses are never adopted")
        mine = (address, port) in own
        if (address.is_loopback or address.is_unspecified) and not mine:
            raise Refused("loopback addresses are refused, but for Hatchery's own PostgreSQL")
        if mine and url.database in _forbidden_databases(settings):
            raise Refused(FORBIDDEN)


async def check_connected(
    conn: AsyncConnection, database: str, control_cluster: int, settings: Settings
) -> None:
    """Whatever address led here: the control database and the maintenance databases, on
    the control server's cluster, are refused."""
    if database in _forbidden_databases(settings) and await cluster_of(conn) == control_cluster:
        raise Refused(FORBIDDEN)


async def cluster_of(conn: AsyncConnection) -> int:
    identifier: int = await conn.scalar(CLUSTER)
    return identifier


FORBIDDEN = "Hatchery's control database and its servers' maintenance databases are never adopted"


def _forbidden_databases(settings: Settings) -> set[str]:
    names = {make_url(settings.require_database_url()).database}
    names.add(make_url(settings.projects_server_url()).database)
    return {n for n in names if n} | MAINTENANCE_DATABASES


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the name has; none when it does not resolve (the connection then
    fails with the same message as any other)."""
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
            RESOLVE_SECONDS,
        )
    except (OSError, TimeoutError):
        return []
    return list({ipaddress.ip_address(info[4][0]) for info in infos})


async def _own_servers(settings: Settings) -> set[tuple[IPAddress, int]]:
    own = set()
    for server in (settings.require_database_url(), settings.projects_server_url()):
        url = make_url(server)
        port = url.port or 5432
        own |= {(a, port) for a in await _resolve(url.host or "localhost", port)}
    return own


def _listed(host: str, addresses: Iterable[IPAddress], entries: list[str]) -> bool:
    found = list(addresses)
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if host.lower() == entry.lower():
                return True
            continue
        if found and all(address in network for address in found):
            return True
    return False

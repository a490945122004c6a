"""The checks an adopted database passes, on the address and once connected."""

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from hatchery.config import Settings
from hatchery.embedded import EmbeddedPostgres
from hatchery.projects import admission


async def test_whatever_address_leads_there_the_control_database_is_refused_once_connected(
    postgres: EmbeddedPostgres, settings: Settings
) -> None:
    engine = create_async_engine(postgres.url(), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            control = await admission.cluster_of(conn)
            for name in ("hatchery", "postgres", "template1"):
                with pytest.raises(admission.Refused, match="control database"):
                    await admission.check_connected(conn, name, control, settings)
            await admission.check_connected(conn, "shop", control, settings)
            # A database of that name on another cluster is none of Hatchery's.
            await admission.check_connected(conn, "hatchery", control + 1, settings)
    finally:
        await engine.dispose()


async def test_the_allowed_hosts_setting_admits_names_and_networks_only(
    settings: Settings,
) -> None:
    listed = settings.model_copy(update={"adoption_allowed_hosts": ["db.internal", "10.1.0.0/16"]})
    await admission.check_database(make_url("postgresql://u:p@10.1.2.3:5432/shop"), listed)
    await admission.check_database(make_url("postgresql://u:p@DB.internal/shop"), listed)
    for url in ("postgresql://u:p@10.2.0.1/shop", "postgresql://u:p@db.example.com/shop"):
        with pytest.raises(admission.Refused, match="not among the hosts"):
            await admission.check_database(make_url(url), listed)
    closed = settings.model_copy(update={"adoption_enabled": False})
    with pytest.raises(admission.Refused, match="disabled"):
        await admission.check_database(make_url("postgresql://u:p@10.1.2.3/shop"), closed)

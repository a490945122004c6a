import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchery import db, queue
from hatchery.config import Settings
from hatchery.embedded import EmbeddedRedis
from hatchery.keys.models import Scope
from hatchery.ratelimit import RateLimiter, TooManyRequests
from tests.conftest import bearer, make_key, start_api, stop

LIMITS = {
    "HATCHERY_RATE_LIMIT_PER_KEY": "4/minute",
    "HATCHERY_RATE_LIMIT_PER_ADDRESS": "12/minute",
    "HATCHERY_RATE_LIMIT_DEPLOYMENTS": "1/minute",
    "HATCHERY_RATE_LIMIT_STREAMS": "1/minute",
}


@pytest.fixture
async def replicas(isolated_env: dict[str, str], scratch_dir: Path) -> AsyncIterator[list[str]]:
    """Two api processes with low limits, sharing one (emptied) Redis database."""
    redis = queue.connect(isolated_env["HATCHERY_REDIS_URL"])
    await redis.flushdb()
    await queue.close(redis)
    env = {**isolated_env, **LIMITS}
    started = [start_api(env, scratch_dir / f"limited-api-{i}.log") for i in range(2)]
    yield [url for _, url in started]
    for process, _ in started:
        stop(process)


@pytest.fixture
async def fresh_token(engine: AsyncEngine, settings: Settings) -> str:
    async with db.create_sessionmaker(engine)() as session:
        return (await make_key(session, settings, Scope.admin))[1]


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_a_key_over_its_limit_gets_429_on_every_replica(
    replicas: list[str], fresh_token: str, engine: AsyncEngine, settings: Settings
) -> None:
    async with httpx.AsyncClient() as client:
        for i in range(4):
            response = await client.get(
                f"{replicas[i % 2]}/api/v1/keys", headers=bearer(fresh_token)
            )
            assert response.status_code == 200
        for url in replicas:
            assert_limited(await client.get(f"{url}/api/v1/keys", headers=bearer(fresh_token)))
        async with db.create_sessionmaker(engine)() as session:
            other = (await make_key(session, settings, Scope.admin))[1]
        assert (
            await client.get(f"{replicas[0]}/api/v1/keys", headers=bearer(other))
        ).status_code == 200


async def test_guessing_tokens_is_limited_per_address(replicas: list[str]) -> None:
    async with httpx.AsyncClient() as client:
        for i in range(12):
            response = await client.get(f"{replicas[i % 2]}/api/v1/keys", headers=bearer("hat_x"))
            assert response.status_code == 401
        assert_limited(await client.get(f"{replicas[0]}/api/v1/keys"))
        assert (await client.get(f"{replicas[0]}/healthz")).status_code == 200


async def test_deployments_and_event_streams_have_limits_of_their_own(
    replicas: list[str], fresh_token: str
) -> None:
    deployment = {
        "environment": "staging",
        "commit_sha": "0" * 40,
        "deployment_id": "ci-1",
    }
    deployments = f"/api/v1/projects/{uuid.uuid4()}/deployments"
    events = f"/api/v1/runs/{uuid.uuid4()}/events"
    async with httpx.AsyncClient() as client:
        first = await client.post(
            replicas[0] + deployments, json=deployment, headers=bearer(fresh_token)
        )
        assert first.status_code == 404  # counted, then refused for the unknown project
        assert_limited(
            await client.post(
                replicas[1] + deployments, json=deployment, headers=bearer(fresh_token)
            )
        )
        assert (
            await client.get(replicas[0] + events, headers=bearer(fresh_token))
        ).status_code == 404
        assert_limited(await client.get(replicas[1] + events, headers=bearer(fresh_token)))


def test_a_malformed_limit_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="rate_limit_streams"):
        Settings(rate_limit_streams="lots")


class Counting(Redis):
    """A Redis client that counts the commands it sends (each one round trip)."""

    sent = 0

    async def execute_command(self, *args: object, **options: object) -> object:
        self.sent += 1
        return await super().execute_command(*args, **options)


async def test_a_request_costs_one_round_trip_for_both_limits_and_counts_nothing_when_over(
    redis_server: EmbeddedRedis, settings: Settings
) -> None:
    redis = Counting.from_url(redis_server.url[:-1] + "4")
    await redis.flushdb()
    limits = {"rate_limit_per_key": "3/minute", "rate_limit_per_address": "5/minute"}
    limiter = RateLimiter(settings.model_copy(update=limits), redis)
    try:
        await limiter.request("10.0.0.9", "warm-up")  # the first call loads the script
        redis.sent = 0
        for _ in range(3):
            await limiter.request("10.0.0.1", "key-a")
        assert redis.sent == 3  # one EVALSHA for both limits, each time
        with pytest.raises(TooManyRequests, match="for key") as refused:
            await limiter.request("10.0.0.1", "key-a")
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
        # Refused: not counted against the address either; another key still has room.
        await limiter.request("10.0.0.1", "key-b")
        await limiter.request("10.0.0.1", None)  # an unknown token counts per address
        with pytest.raises(TooManyRequests, match="for address"):
            await limiter.request("10.0.0.1", "key-c")
        await limiter.request("10.0.0.2", "key-c")
    finally:
        await redis.aclose()

import time
from typing import Any


async def ping(ctx: dict[str, Any], enqueued_at: float | None = None) -> dict[str, float | None]:
    """A trivial job that proves the api → queue → worker path and measures pickup."""
    started = time.time()
    return {"enqueued_at": enqueued_at, "started_at": started}

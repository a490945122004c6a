"""Prometheus metrics. Each process counts what it does: the api its HTTP requests, open
event streams and the queue it feeds (served at `GET /metrics`); a worker its runs,
steps, job pickups and backups (served on `HATCHERY_WORKER_METRICS_PORT`). A run is
counted by the process that finished it: a worker, or the api for a run cancelled
before it started."""

import time

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import start_http_server as _serve

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

HTTP_REQUESTS = Counter(
    "hatchery_http_requests", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "hatchery_http_request_duration_seconds",
    "Time to answer an HTTP request (for an event stream: its lifetime).",
    ["method", "route"],
    buckets=_FAST,
)
SSE_CONNECTIONS = Gauge("hatchery_sse_connections", "Open event-stream connections.")
QUEUE_DEPTH = Gauge("hatchery_queue_depth", "Jobs waiting in the queue, read at scrape time.")

RUNS = Counter("hatchery_runs", "Runs finished.", ["kind", "status"])
RUN_SECONDS = Histogram(
    "hatchery_run_duration_seconds", "From a run's start to its end.", ["kind", "status"],
    buckets=_SLOW,
)  # fmt: skip
STEP_SECONDS = Histogram(
    "hatchery_step_duration_seconds", "One step of a run.", ["kind", "step", "status"],
    buckets=_SLOW,
)  # fmt: skip
JOB_PICKUP_SECONDS = Histogram(
    "hatchery_job_pickup_seconds", "From a job being due to a worker starting it.",
    buckets=_FAST,
)  # fmt: skip
BACKUP_BYTES = Histogram(
    "hatchery_backup_size_bytes", "Size of each verified backup.",
    buckets=(2**10, 2**14, 2**18, 2**20, 2**22, 2**24, 2**26, 2**28, 2**30, 2**32, 2**34),
)  # fmt: skip
BACKUP_SECONDS = Histogram(
    "hatchery_backup_duration_seconds", "Dump and verification of each backup.", buckets=_SLOW
)


def run_finished(kind: str, status: str, seconds: float | None) -> None:
    RUNS.labels(kind, status).inc()
    if seconds is not None:
        RUN_SECONDS.labels(kind, status).observe(seconds)


def job_picked_up(due_ms: int) -> None:
    JOB_PICKUP_SECONDS.observe(max(0.0, time.time() - due_ms / 1000))


def serve(port: int, host: str) -> None:
    """The worker's metrics, on a port of their own (a thread of prometheus_client)."""
    _serve(port, addr=host)

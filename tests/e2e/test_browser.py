"""A browser follows a run: EventSource on a page from an allowed origin, with a stream
ticket in the URL, through a restart of the api process mid-run."""

import json
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from hatchery.embedded import free_port, wait_for_port
from tests.conftest import bearer, start, stop
from tests.e2e.helpers import create_project
from tests.sse import follow

PAGE = Path(__file__).resolve().parents[1] / "browser/follow.html"
Reports = queue.Queue[tuple[str, dict[str, Any]]]


@pytest.fixture
def page_server() -> Iterator[tuple[str, Reports]]:
    """Serves the page and collects what it reports (POST /seen, /error, /result)."""
    reports: Reports = queue.Queue()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PAGE.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            reports.put((self.path, json.loads(self.rfile.read(length))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", reports
    server.shutdown()
    server.server_close()


def wait_for(reports: Reports, path: str, match: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the page never reported {path} {match}"
        try:
            where, body = reports.get(timeout=remaining)
        except queue.Empty:
            continue
        if where == path and all(body.get(k) == v for k, v in match.items()):
            return body


def start_api_on(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    process = start(["api", "--port", str(port)], env, log)
    wait_for_port(port, 30, process)
    return process


async def test_event_source_follows_a_run_through_an_api_restart_losing_and_repeating_nothing(
    isolated_env: dict[str, str],
    scratch_dir: Path,
    live_admin_token: str,
    page_server: tuple[str, Reports],
    tmp_path: Path,
) -> None:
    page, reports = page_server
    env = {**isolated_env, "HATCHERY_CORS_ORIGINS": page, "HATCHERY_SSE_RETRY_MS": "200"}
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    log = scratch_dir / "browser-api.log"
    worker = start(["worker"], env, scratch_dir / "browser-worker.log")
    api = start_api_on(port, env, log)
    browser = None
    try:
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
            allowed = await client.get("/healthz", headers={"Origin": page})
            assert allowed.headers["access-control-allow-origin"] == page
            other = await client.get("/healthz", headers={"Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in other.headers
            created = await create_project(client, live_admin_token, "browsed", "slow-baseline")
            run_id = created["run"]["id"]
            ticket = (
                await client.post(
                    f"/api/v1/runs/{run_id}/events/tickets", headers=bearer(live_admin_token)
                )
            ).json()
        assert live_admin_token not in ticket["events_url"]

        browser = subprocess.Popen(
            [
                shutil.which("chromium") or "chromium", "--headless", "--no-sandbox",
                "--disable-gpu", "--disable-background-networking",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"{page}/follow.html?events={quote(api_url + ticket['events_url'], safe='')}",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(reports, "/seen", {"type": "step.started", "step": "apply_baseline"}, 60)
        api.send_signal(signal.SIGTERM)  # mid-step: the page loses its connection
        api.wait(15)
        api = start_api_on(port, env, log)
        result = wait_for(reports, "/result", {}, 90)

        async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
            frames = await follow(client, run_id, live_admin_token)
    finally:
        if browser is not None:
            browser.kill()
            browser.wait()
        stop(api)
        stop(worker)

    expected = [(f.event, f.id) for f in frames if f.event != "snapshot"]
    seen = [(e["type"], e["id"]) for e in result["seen"] if e["type"] != "snapshot"]
    assert seen == expected  # in order, nothing lost, nothing twice
    assert expected[-2:] == [("run.succeeded", expected[-1][1]), ("end", expected[-1][1])]
    assert result["errors"] >= 1  # the restart was a real disconnection
    assert [e["type"] for e in result["seen"]].count("snapshot") >= 2  # one per connection


async def test_a_stream_ticket_follows_one_run_and_dies_with_its_key(
    live: httpx.AsyncClient, live_admin_token: str
) -> None:
    created = await create_project(live, live_admin_token, "ticketed")
    run_id = created["run"]["id"]
    key = (
        await live.post(
            "/api/v1/keys",
            json={"name": "frontend", "scopes": ["projects:read"]},
            headers=bearer(live_admin_token),
        )
    ).json()
    issued = await live.post(f"/api/v1/runs/{run_id}/events/tickets", headers=bearer(key["token"]))
    assert issued.status_code == 201
    ticket = issued.json()["ticket"]
    assert ticket.startswith("hst_") and key["token"] not in issued.text

    frames = await follow(live, run_id, "", ticket=ticket)
    assert frames[0].event == "snapshot" and frames[-1].event == "end"
    elsewhere = await live.get(f"/api/v1/runs/{uuid.uuid4()}/events", params={"ticket": ticket})
    assert elsewhere.status_code == 401
    forged = await live.get(f"/api/v1/runs/{run_id}/events", params={"ticket": "hst_forged"})
    assert forged.status_code == 401

    await live.delete(f"/api/v1/keys/{key['id']}", headers=bearer(live_admin_token))
    revoked = await live.get(f"/api/v1/runs/{run_id}/events", params={"ticket": ticket})
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]

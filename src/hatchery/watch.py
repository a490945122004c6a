"""Report a deployment and follow a run over HTTP, for `hatchery deploy --wait` and
`hatchery runs watch`: a live table on a terminal, one line per event in a CI log.

Exit codes (the same as examples/ci/deploy.sh): 0 the run succeeded, 1 it failed or
was cancelled, 2 it did not finish in time, 3 the request was refused.
"""

import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from httpx_sse import ServerSentEvent, connect_sse
from rich.console import Console
from rich.live import Live
from rich.table import Table

SUCCEEDED, FAILED, TIMED_OUT, REFUSED = 0, 1, 2, 3
T = TypeVar("T")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MARKS = {
    "pending": "[dim]·[/]",
    "running": "[yellow]…[/]",
    "succeeded": "[green]✓[/]",
    "skipped": "[dim]-[/]",
    "failed": "[red]✗[/]",
}


class Refused(Exception):
    """The api said no; the message is its problem detail."""


class Transient(Exception):
    """The api could not answer now (5xx, 429, a dropped connection): try again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def client(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url.rstrip("/") + "/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30, read=60),
    )


def _checked(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail") or response.reason_phrase
    except ValueError:
        detail = response.reason_phrase
    message = f"{response.status_code}: {detail}"
    if response.status_code == 429 or response.status_code >= 500:
        retry_after = response.headers.get("Retry-After", "")
        raise Transient(message, float(retry_after) if retry_after.isdigit() else None)
    raise Refused(message)


def persistently(action: Callable[[], T], deadline: float) -> T:
    """`action`, tried again after transient failures (with back-off, or as long as the
    api's Retry-After says) until `deadline`; a refusal is final at once."""
    delay = 0.5
    while True:
        try:
            return action()
        except (Transient, httpx.TransportError) as exc:
            wait = getattr(exc, "retry_after", None) or delay
            if time.monotonic() + wait > deadline:
                raise
            time.sleep(wait)
            delay = min(delay * 2, 10.0)


def project_id(api: httpx.Client, project: str) -> str:
    """The id of a project named by id or slug."""
    if _UUID.match(project):
        return project
    found = _checked(api.get("/projects", params={"slug": project}))["items"]
    if not found:
        raise Refused(f"no project '{project}'")
    return str(found[0]["id"])


def deploy(
    api: httpx.Client,
    project: str,
    environment: str,
    commit: str,
    deployment_id: str,
    deadline: float,
) -> dict[str, Any]:
    """Report the deployment; sending it again is safe (it is idempotent on its id)."""
    body = {"environment": environment, "commit_sha": commit, "deployment_id": deployment_id}
    found = persistently(lambda: project_id(api, project), deadline)
    run: dict[str, Any] = persistently(
        lambda: _checked(api.post(f"/projects/{found}/deployments", json=body)), deadline
    )
    return run


def refresh(
    api: httpx.Client, project: str, environment: str, body: dict[str, Any], deadline: float
) -> dict[str, Any]:
    """Ask for a refresh (or its plan, with `dry_run`); tried again safely: one
    Idempotency-Key for every try."""
    found = persistently(lambda: project_id(api, project), deadline)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    path = f"/projects/{found}/environments/{environment}/refreshes"
    answer: dict[str, Any] = persistently(
        lambda: _checked(api.post(path, json=body, headers=headers)), deadline
    )
    return answer


def windows(
    api: httpx.Client, project: str, environment: str, specs: list[str] | None, deadline: float
) -> dict[str, Any]:
    """The environment's deploy windows; set to `specs` first unless None."""
    found = persistently(lambda: project_id(api, project), deadline)
    path = f"/projects/{found}/environments/{environment}/windows"
    if specs is None:
        answer: dict[str, Any] = persistently(lambda: _checked(api.get(path)), deadline)
    else:
        answer = persistently(lambda: _checked(api.put(path, json={"windows": specs})), deadline)
    return answer


@dataclass
class _Progress:
    steps: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def table(self, title: str) -> Table:
        table = Table(title=title, show_header=False, box=None)
        for name, status in self.steps.items():
            table.add_row(_MARKS.get(status, status), name, self.notes.get(name, ""))
        return table


def watch(
    api: httpx.Client, run_id: str, console: Console, timeout: float, deadline: float | None = None
) -> int:
    """Follow a run to its end, resuming after the last event seen if the connection drops
    or the api cannot answer for a while; the exit code of its outcome. `timeout` is the
    wait the user asked for; `deadline` ends it sooner when part of it is already spent."""
    deadline = time.monotonic() + timeout if deadline is None else deadline
    progress, last_id, delay = _Progress(), "", 0.5
    live = Live(progress.table(f"run {run_id}"), console=console, auto_refresh=False)
    with live if console.is_terminal else contextlib.nullcontext():
        while time.monotonic() < deadline:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            remaining = httpx.Timeout(30, read=min(60.0, max(1.0, deadline - time.monotonic())))
            wait = delay
            try:
                with connect_sse(
                    api, "GET", f"/runs/{run_id}/events", headers=headers, timeout=remaining
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                        _checked(source.response)
                    for event in source.iter_sse():
                        last_id, delay = event.id or last_id, 0.5
                        outcome = _show(event, progress, console)
                        if console.is_terminal:
                            live.update(progress.table(f"run {run_id}"), refresh=True)
                        if outcome is not None:
                            return outcome
            except Transient as exc:  # the api is unwell for now: back off, resume
                wait = exc.retry_after or delay
                delay = min(delay * 2, 10.0)
            except httpx.TransportError:  # dropped or timed out: resume after the last event
                delay = min(delay * 2, 10.0)
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
    console.print(f"run {run_id} did not finish within {timeout:g}s")
    return TIMED_OUT


def _show(event: ServerSentEvent, progress: _Progress, console: Console) -> int | None:
    data = json.loads(event.data) if event.data else {}
    step = str(data.get("step"))
    line = None
    if event.event == "snapshot":
        progress.steps = {s["name"]: s["status"] for s in data["run"]["steps"]}
    elif event.event == "step.started":
        progress.steps[step] = "running"
        line = f"  {step} ..."
    elif event.event == "step.progress":
        progress.notes[step] = data.get("message", "")
        line = f"  {step}: {data.get('message', '')}"
    elif event.event == "step.succeeded":
        progress.steps[step] = "succeeded"
        line = f"  {step} done ({data.get('duration_ms', 0)} ms)"
    elif event.event == "step.failed":
        progress.steps[step] = "failed"
        progress.notes[step] = data.get("error", "")
        line = f"  {step} FAILED: {data.get('error', '')}"
    elif event.event in ("run.succeeded", "run.failed", "run.cancelled", "end"):
        status = data.get("status")
        if status is None:  # an `end` without outcome: the stream was cut, reconnect
            return None
        error = f": {data['error']}" if data.get("error") else ""
        console.print(f"run {data['run_id']} {status}{error}", markup=False)
        return SUCCEEDED if status == "succeeded" else FAILED
    if line is not None and not console.is_terminal:
        console.print(line, markup=False, highlight=False)
    return None

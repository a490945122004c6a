"""End to end: `hatchery dev` on a fresh directory, driven like a developer would."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest


def _source(dev_env: Path) -> dict[str, str]:
    result = subprocess.run(
        ["bash", "-c", f"set -a; . {dev_env}; env"], capture_output=True, text=True, check=True
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "-o", "/dev/stderr", "-w", "%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="hatchery-dev-"))
    path.chmod(0o755)
    return path


def test_dev_runs_everything_and_stops_it_all_on_sigint(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHERY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "hatchery.cli", "dev"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dev_env = workdir / ".hatchery" / "dev.env"
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while not dev_env.exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "dev.env was not written in time"
            time.sleep(0.2)
        values = _source(dev_env)
        url, admin_key = values["HATCHERY_URL"], values["HATCHERY_ADMIN_KEY"]

        while _curl(f"{url}/readyz").stdout != "200":
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.3)

        authorized = _curl(
            "-H",
            f"Authorization: Bearer {admin_key}",
            "-H",
            "X-Request-ID: dev-e2e-1",
            f"{url}/api/v1/keys",
        )
        assert authorized.stdout == "200"
        assert '"dev admin"' in authorized.stderr
        assert _curl(f"{url}/api/v1/keys").stdout == "401"
        assert _curl(f"{url}/metrics").stdout == "200"

        started = psutil.Process(process.pid).children(recursive=True)
        postmaster = int((workdir / ".hatchery/postgres/postmaster.pid").read_text().split()[0])
        started.append(psutil.Process(postmaster))
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "redis-server" in names and "postgres" in names
        assert " api" in names and " worker" in names
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]

    assert process.returncode == 0, output
    assert "Admin key: hat_" in output
    assert "/metrics (worker)" in output
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    request_line = next(e for e in logged if e.get("request_id") == "dev-e2e-1")
    assert request_line["event"] == "request" and request_line["status"] == 200
    assert admin_key not in output.replace(f"Admin key: {admin_key}", "")
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    assert not dev_env.exists()

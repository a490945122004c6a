"""What CI runs after a deployment: examples/ci/deploy.sh (curl, with or without jq) and
`hatchery deploy --wait`, against real api and worker processes."""

import io
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from hatchery import watch
from tests.e2e.helpers import WorkingCopy, active_project, run_cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples/ci/deploy.sh"
# What the script may use; jq only when asked for.
TOOLS = ["curl", "sed", "grep", "head", "tail", "sleep", "cat"]


def tool_dir(path: Path, with_jq: bool) -> Path:
    path.mkdir()
    for tool in TOOLS + (["jq"] if with_jq else []):
        found = shutil.which(tool)
        assert found, tool
        (path / tool).symlink_to(found)
    return path


def run_script(
    tmp_path: Path, url: str, token: str, *args: str, with_jq: bool, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    tools = tool_dir(tmp_path / f"bin-{len(list(tmp_path.iterdir()))}", with_jq)
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), *args],
        env={"PATH": str(tools), "HATCHERY_URL": url, "HATCHERY_TOKEN": token,
             "HATCHERY_TIMEOUT": str(timeout)},
        capture_output=True, text=True, timeout=timeout + 30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("with_jq", [True, False], ids=["jq", "no-jq"])
async def test_deploy_script_exits_0_on_success_and_1_on_failure(
    live: httpx.AsyncClient, live_admin_token: str, tmp_path: Path, with_jq: bool
) -> None:
    slug = f"ci-script-{'jq' if with_jq else 'sed'}"
    project, deploy_token = await active_project(live, live_admin_token, slug)
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    good = repo.add_revision("0002", "0001", ["CREATE TABLE gadget (id int)"])
    url = str(live.base_url)

    succeeded = run_script(
        tmp_path, url, deploy_token, slug, "staging", good, "ci-1", with_jq=with_jq
    )
    assert succeeded.returncode == 0, succeeded.stdout + succeeded.stderr
    lines = succeeded.stdout.splitlines()
    for step in ("checkout", "dependencies", "preflight", "backup", "migrate", "record"):
        assert f"  {step} done" in lines, succeeded.stdout
    assert "succeeded" in lines[-1]

    bad = repo.add_revision("0003", "0002", ["ALTER TABLE no_such_table ADD COLUMN x int"])
    failed = run_script(
        tmp_path, url, deploy_token, project["id"], "staging", bad, "ci-2", with_jq=with_jq
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "migrate FAILED" in failed.stdout and "no_such_table" in failed.stdout
    assert "failed" in failed.stderr

    refused = run_script(
        tmp_path, url, deploy_token, slug, "production", bad, "ci-3", with_jq=with_jq
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "staging" in refused.stderr  # gated: staging has not passed 0003


async def test_deploy_script_and_cli_time_out_with_exit_2_when_no_worker_takes_the_run(
    live: httpx.AsyncClient, live_admin_token: str, isolated_api: str, tmp_path: Path
) -> None:
    project, deploy_token = await active_project(live, live_admin_token, "ci-timeout")
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    commit = repo.add_revision("0002", "0001", ["CREATE TABLE gadget (id int)"])
    # The isolated api's queue has no worker: the run stays queued.
    result = run_script(
        tmp_path, isolated_api, deploy_token, "ci-timeout", "staging", commit, "ci-1",
        with_jq=True, timeout=3,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "did not finish within 3s" in result.stderr

    waited = run_cli(
        isolated_api, deploy_token, "deploy", "--project", "ci-timeout", "--env", "staging",
        "--commit", commit, "--deployment-id", "ci-2", "--wait", "--timeout", "2",
    )  # fmt: skip
    assert waited.returncode == 2, waited.stdout + waited.stderr
    assert "did not finish within 2s" in waited.stdout


async def test_cli_deploy_wait_and_runs_watch_report_the_outcome(
    live: httpx.AsyncClient, live_admin_token: str, tmp_path: Path
) -> None:
    project, deploy_token = await active_project(live, live_admin_token, "ci-cli")
    repo = WorkingCopy(project["repository_url"], tmp_path / "repo")
    good = repo.add_revision("0002", "0001", ["CREATE TABLE gadget (id int)"])
    url = str(live.base_url)
    deploy = ["deploy", "--project", "ci-cli", "--env", "staging", "--wait"]

    succeeded = run_cli(url, deploy_token, *deploy, "--commit", good, "--deployment-id", "c1")
    assert succeeded.returncode == 0, succeeded.stdout + succeeded.stderr
    assert "  migrate done" in succeeded.stdout and "succeeded" in succeeded.stdout

    bad = repo.add_revision("0003", "0002", ["ALTER TABLE no_such_table ADD COLUMN x int"])
    failed = run_cli(url, deploy_token, *deploy, "--commit", bad, "--deployment-id", "c2")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "migrate FAILED" in failed.stdout and "no_such_table" in failed.stdout
    run_id = failed.stdout.split()[1].rstrip(":")

    watched = run_cli(url, deploy_token, "runs", "watch", run_id)
    assert watched.returncode == 1 and "failed" in watched.stdout.splitlines()[-1]
    first_run = succeeded.stdout.split()[1].rstrip(":")
    assert run_cli(url, deploy_token, "runs", "watch", first_run).returncode == 0

    # On a terminal: a live table of the steps instead of lines.
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with watch.client(url, deploy_token) as api:
        assert watch.watch(api, first_run, console, timeout=30) == watch.SUCCEEDED
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # without colours
    for step in ("checkout", "dependencies", "preflight", "backup", "migrate", "record"):
        assert re.search(rf"✓\s+{step}", shown), shown
    assert "  migrate done" not in shown

    unknown = run_cli(url, deploy_token, "deploy", "--project", "no-such-project",
                      "--env", "staging", "--commit", good, "--deployment-id", "c3")  # fmt: skip
    assert unknown.returncode == 3 and "no project" in unknown.stderr
    assert deploy_token not in succeeded.stdout + failed.stdout + unknown.stderr

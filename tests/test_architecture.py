"""How the code is put together, checked: one place commits, and imports point one way."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "hatchery"


def _awaited_commits(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every `await <something>.commit()` in a module."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
                continue
            call = child.value if isinstance(child, ast.Await) else None
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "commit"
            ):
                found.append((function, child.lineno))
            visit(child, function)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_only_the_transaction_context_commits_a_session() -> None:
    # A bare session.commit() skips the after-commit callbacks: a run's job would never be
    # enqueued. db.transaction is the one unit of work.
    commits = {
        f"{path.relative_to(SRC)}:{line} in {function}"
        for path in SRC.rglob("*.py")
        for function, line in _awaited_commits(path)
    }
    assert len(commits) == 1, commits
    assert next(iter(commits)).startswith("db.py:") and commits.pop().endswith("in transaction")


def test_imports_between_layers_point_one_way() -> None:
    # The contracts are in pyproject.toml ([tool.importlinter]): entry points above plans,
    # plans above the domains, domains in one order, and infrastructure below them all.
    linted = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert linted.returncode == 0, linted.stdout[-5000:] + linted.stderr[-2000:]
    assert "0 broken" in linted.stdout


def test_what_the_worker_raises_has_one_root() -> None:
    # A step fails with a Failure's message; the child (the project's own Python) and a
    # refused input (UnsafeRepository, a 422 in the api) are not the worker's failures.
    exempt = {"migrator/child.py"}
    modules = ["migrator", "plans", "runs", "git.py", "pgtools.py", "queue.py"]
    roots = {
        f"{path.relative_to(SRC)}:{node.name}"
        for module in modules
        for path in ([SRC / module] if module.endswith(".py") else (SRC / module).rglob("*.py"))
        if str(path.relative_to(SRC)) not in exempt
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(
            getattr(base, "id", "") in {"Exception", "RuntimeError", "OSError"}
            for base in node.bases
        )
    }
    assert roots == set(), roots

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from hatchery.migrations import runner
from hatchery.projects import git
from hatchery.projects.models import Project


@contextlib.asynccontextmanager
async def checkout(project: Project, commit: str) -> AsyncIterator[runner.Scripts]:
    """The project's migrations exactly as committed at `commit`, from its bare repository."""
    with tempfile.TemporaryDirectory(prefix="hatchery-checkout-") as tmp:
        tree = Path(tmp).resolve()
        await git.export(Path(project.repository_path), commit, tree)
        yield runner.Scripts(runner.find_alembic_ini(tree, project.alembic_ini), root=tree)

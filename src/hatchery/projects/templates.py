"""Project templates: copier templates shipped in `hatchery/templates/`, plus any in the
directory that `HATCHERY_EXTRA_TEMPLATES_DIR` names."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import copier

SHIPPED = Path(__file__).resolve().parents[1] / "templates"


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    path: Path


def available(extra_dir: Path | None = None) -> dict[str, Template]:
    found: dict[str, Template] = {}
    for directory in (SHIPPED, extra_dir):
        if directory is None or not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if (path / "copier.yml").is_file():
                readme = path / "README.md"
                description = readme.read_text().strip().splitlines()[0] if readme.exists() else ""
                found[path.name] = Template(path.name, description, path)
    return found


def render(template: Template, destination: Path, data: dict[str, Any]) -> None:
    copier.run_copy(
        str(template.path),
        str(destination),
        data=data,
        defaults=True,
        overwrite=True,
        quiet=True,
        unsafe=False,
    )

"""pyproject.toml installs every package of the source tree: a wheel (a non-editable install) holds nothing else."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_folder_with_an_init_is_a_listed_package() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            inside = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *inside)))
    assert found == set(setuptools["packages"])

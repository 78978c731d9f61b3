"""The layering README.md's Architecture table promises: every core module in one layer, imports only downwards."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "sslbench"


def layers() -> list[tuple[str, list[str]]]:
    """(layer, module patterns relative to sslbench/) in the table's order, top = lowest."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Architecture", 1)[1]
    rows = re.findall(r"^\| ([a-z ]+) \| (.+?) \|", section, flags=re.MULTILINE)
    return [(name, re.findall(r"`([^`]+\.py)`", cells)) for name, cells in rows if "`" in cells]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of() -> dict[str, int]:
    table = layers()
    found: dict[str, int] = {}
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE).as_posix()
        if relative in ("__init__.py", "__main__.py"):
            continue
        matches = [i for i, (_, patterns) in enumerate(table) if any(fnmatch.fnmatch(relative, p) for p in patterns)]
        if relative.endswith("/__init__.py") and not matches:  # a package lives where its modules do
            matches = [
                i
                for i, (_, patterns) in enumerate(table)
                if any(p.startswith(relative.split("/")[0] + "/") for p in patterns)
            ]
        assert len(matches) == 1, f"sslbench/{relative} is in {len(matches)} layers of README's Architecture table"
        found[module_name(path)] = matches[0]
    return found


def imports(path: Path) -> set[str]:
    """Every sslbench / sslbench_plugins module *path* imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in ("sslbench", "sslbench_plugins")}


def test_every_core_module_has_exactly_one_layer() -> None:
    assert len(layer_of()) > 30


def test_core_imports_only_go_down_the_table_and_never_into_plugins() -> None:
    order = layer_of()
    names = [name for name, _ in layers()]
    upward = []
    for path in sorted(CORE.rglob("*.py")):
        source = module_name(path)
        if source not in order:
            continue
        for target in imports(path):
            assert not target.startswith("sslbench_plugins"), f"{source} imports the plugin {target}"
            if target in order and order[target] > order[source]:
                upward.append(f"{source} ({names[order[source]]}) imports {target} ({names[order[target]]})")
    assert not upward, "imports going up README's Architecture table:\n" + "\n".join(upward)

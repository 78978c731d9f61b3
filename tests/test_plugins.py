"""The plugin system: third-party discovery, duplicates, unknown names, broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.registry import KINDS, Entry, Registry

THIRD_PARTY_PLUGIN = '''
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.registry import Entry
from sslbench_plugins.policies import FirstMiddlePolicy


@hookimpl
def sslbench_policies():
    return [Entry("my-policy", "A third-party transfer policy", FirstMiddlePolicy)]
'''


def install_fake_distribution(site: Path, package: str, entry_points: dict[str, str], code: dict[str, str]) -> None:
    """Lay out a package and its ``.dist-info`` the way ``pip install`` would."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    for module, source in code.items():
        (site / package / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sslbench]\n{lines}\n")


def run_plugins_json(site: Path) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "sslbench", "plugins", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_installed_third_party_plugin_is_listed_like_a_builtin(tmp_path: Path):
    install_fake_distribution(tmp_path, "thirdparty_pose", {"mine": "thirdparty_pose.plugin"}, {"plugin": THIRD_PARTY_PLUGIN})
    listing, _ = run_plugins_json(tmp_path)
    rows = {(row["kind"], row["name"]): row for row in listing["plugins"]}
    assert rows[("policy", "my-policy")]["provider"].startswith("thirdparty_pose")
    assert rows[("policy", "first+middle")]["provider"].startswith("sslbench")
    assert ("backbone", "cpm6") in rows and ("dataset", "synthetic") in rows


def test_broken_third_party_plugin_is_a_warning_and_the_rest_works(tmp_path: Path):
    install_fake_distribution(
        tmp_path, "broken_pose", {"broken": "broken_pose.plugin"}, {"plugin": "import a_module_that_does_not_exist\n"}
    )
    listing, stderr = run_plugins_json(tmp_path)
    assert any("broken_pose" in message and "a_module_that_does_not_exist" in message for message in listing["load_errors"])
    assert any(row["name"] == "cpm6" for row in listing["plugins"])


class _Duplicate:
    @hookimpl
    def sslbench_policies(self):
        return [Entry("first", "a second 'first' policy", object)]


def test_a_name_registered_twice_names_both_providers():
    registry = Registry(plugins=[_Duplicate()])
    with pytest.raises(ConfigError, match=r"policy 'first' is registered twice: by sslbench .* and by _Duplicate"):
        registry.names("policy")


def test_unknown_name_lists_what_exists_and_suggests_the_closest():
    registry = Registry()
    with pytest.raises(ConfigError) as info:
        registry.get("pretext", "jigsaw-heatmp", "--pretext")
    message = str(info.value)
    assert "--pretext" in message and "Did you mean 'jigsaw-heatmap'?" in message
    assert "rotation" in message and "inpaint" in message


def test_every_kind_has_first_party_entries_with_descriptions():
    registry = Registry()
    for kind in KINDS:
        entries = registry.entries(kind)
        assert entries, kind
        assert all(entry.description and "\n" not in entry.description for entry in entries)

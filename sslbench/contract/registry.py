"""Plugin discovery and lookup by name.

One :class:`pluggy.PluginManager` holds every plugin. Plugins are found through
the ``sslbench`` entry-point group, first-party ones included, so a third-party
package is discovered exactly like the built-ins. A plugin that fails to import
is reported as a warning and skipped; everything else keeps working.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from sslbench.contract import hookspecs
from sslbench.contract.errors import ConfigError, did_you_mean

#: kind name -> hook name
KINDS: dict[str, str] = {
    "backbone": "sslbench_backbones",
    "pretext": "sslbench_pretexts",
    "policy": "sslbench_policies",
    "dataset": "sslbench_datasets",
    "strategy": "sslbench_strategies",
}


class PluginLoadWarning(UserWarning):
    """A plugin package could not be imported; it is skipped."""


@dataclass(frozen=True)
class Entry:
    """One named thing a plugin provides (a backbone, pretext, policy, dataset or strategy)."""

    name: str
    description: str
    factory: Callable[..., Any]
    #: filled in by the registry: "<distribution> (<module>)"
    provider: str = field(default="", compare=False)

    def create(self, **options: Any) -> Any:
        return self.factory(**options)

    def defaults(self) -> dict[str, Any]:
        """The options the factory takes that have a default, with it: a ``defaults`` attribute of the
        factory when it has one (a dict, or a function returning one), else the factory's signature
        (a class's ``__init__``; wrappers made with :func:`functools.wraps` are looked through)."""
        declared = getattr(self.factory, "defaults", None)
        if declared is not None:
            return dict(declared() if callable(declared) else declared)
        try:
            parameters = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):  # a builtin or other callable without a signature
            return {}
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name: p.default for p in parameters if p.kind in kinds and p.default is not inspect.Parameter.empty}

    @property
    def version(self) -> Any:
        """The ``version`` the factory (a class, or a :func:`functools.partial` of one) declares, or None.

        A dataset declares one when the images it yields change between releases (a renderer);
        cell ids and pretext cache keys then include it.
        """
        target = self.factory
        while isinstance(target, functools.partial):
            target = target.func
        return getattr(target, "version", None)


class Registry:
    """All entries of all plugins, by kind and name."""

    def __init__(self, plugins: Iterable[object] = (), load_entrypoints: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.load_errors: list[str] = []
        self._providers: dict[int, str] = {}
        if load_entrypoints:
            self._load_entrypoints()
        for plugin in plugins:
            self.register(plugin)
        self._entries: dict[str, dict[str, Entry]] | None = None

    # -- discovery -----------------------------------------------------------------
    def _load_entrypoints(self) -> None:
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            dist = ep.dist.name if ep.dist is not None else "?"
            if self.pm.get_plugin(ep.name) is not None:
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break sslbench
                msg = f"plugin {ep.name!r} from package {dist!r} failed to load: {type(exc).__name__}: {exc}"
                self.load_errors.append(msg)
                warnings.warn(msg, PluginLoadWarning, stacklevel=2)
                continue
            self.register(plugin, name=ep.name, provider=f"{dist} ({ep.value})")

    def register(self, plugin: object, name: str | None = None, provider: str | None = None) -> None:
        self.pm.register(plugin, name=name)
        module = getattr(plugin, "__name__", type(plugin).__name__)
        self._providers[id(plugin)] = provider or module
        self._entries = None

    # -- lookup --------------------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, Entry]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                provider = self._providers.get(id(impl.plugin), impl.plugin_name)
                for entry in impl.function() or []:
                    if not isinstance(entry, Entry):
                        raise ConfigError(f"plugin {provider}: {hook_name} must return Entry objects, got {entry!r}")
                    entry = Entry(entry.name, entry.description, entry.factory, provider)
                    if entry.name in entries[kind]:
                        other = entries[kind][entry.name].provider
                        raise ConfigError(
                            f"{kind} {entry.name!r} is registered twice: by {other} and by {provider}"
                        )
                    entries[kind][entry.name] = entry
        self._entries = entries
        return entries

    def names(self, kind: str) -> list[str]:
        return sorted(self._collect()[kind])

    def entries(self, kind: str) -> list[Entry]:
        found = self._collect()[kind]
        return [found[name] for name in sorted(found)]

    def get(self, kind: str, name: str, option: str | None = None) -> Entry:
        """The entry called *name*, or an error listing what exists and the closest match."""
        found = self._collect()[kind]
        if name in found:
            return found[name]
        label = option or f"{kind} name"
        hint = did_you_mean(name, found)
        available = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"{label}: unknown {kind} {name!r}.{hint} Available: {available}")

    def create(self, kind: str, name: str, option: str | None = None, **options: Any) -> Any:
        return self.get(kind, name, option).create(**options)


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The process-wide registry of installed plugins."""
    return Registry()

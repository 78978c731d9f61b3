"""The whole extension surface of sslbench: five hooks, one per kind of plugin.

A plugin is any module or object that implements one or more of these hooks and
is registered under the ``sslbench`` entry-point group, for example in its
``pyproject.toml``::

    [project.entry-points.sslbench]
    my-pretext = "my_package.my_pretext"

Each hook returns a list of :class:`sslbench.contract.registry.Entry` objects: a unique
name, a one-line description and a factory. The first-party plugins in
``plugins/`` register in exactly the same way. Hooks are called with keyword
arguments only and take none.
"""

from __future__ import annotations

import pluggy

PROJECT = "sslbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sslbench_backbones():
    """Return entries whose factory builds a :class:`sslbench.contract.networks.Backbone`.

    The factory is called as ``factory(num_outputs=int, **options)``.
    """


@hookspec
def sslbench_pretexts():
    """Return entries whose factory builds a :class:`sslbench.contract.interfaces.Pretext`.

    The factory is called as ``factory(**options)``.
    """


@hookspec
def sslbench_policies():
    """Return entries whose factory builds a :class:`sslbench.contract.networks.TransferPolicy`.

    The factory is called as ``factory(**options)``.
    """


@hookspec
def sslbench_datasets():
    """Return entries whose factory builds a :class:`sslbench.contract.interfaces.ImageDataset`.

    The factory is called as ``factory(root=Path | None, skip_bad=bool, **options)``.
    """


@hookspec
def sslbench_strategies():
    """Return entries whose factory builds a :class:`sslbench.contract.interfaces.Strategy`.

    The factory is called as ``factory()``; a strategy reads its options from the run config.
    """

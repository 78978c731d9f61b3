"""First-party sslbench plugins, installed as ``sslbench_plugins``.

Each module is one plugin registered under the ``sslbench`` entry-point group in
``pyproject.toml``, exactly as a third-party package would register its own. The one
subpackage, ``synthetic_people``, is not a plugin: it is the renderer that ``synthetic`` draws with.
"""

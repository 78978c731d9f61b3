"""The command line: :mod:`~sslbench.cli.main` is the ``sslbench`` group, one module per command family."""

"""The contract: what a plugin implements and what a benchmark cell is.

:mod:`~sslbench.contract.hookspecs` declares the five plugin kinds (backbones, pretexts, transfer
policies, datasets, strategies), :mod:`~sslbench.contract.interfaces` their interfaces,
:mod:`~sslbench.contract.registry` finds them through the ``sslbench`` entry-point group,
:mod:`~sslbench.contract.config` is the run config and its cell id,
:mod:`~sslbench.contract.skeleton` a dataset's joints and :mod:`~sslbench.contract.errors` the
errors the command line turns into one line.
"""

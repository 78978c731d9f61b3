"""Experiments: sweeps of benchmark cells, from a spec to records in a results directory.

:mod:`~sslbench.experiment.spec` reads a sweep spec, :mod:`~sslbench.experiment.plan` expands it
into ordered cells, :mod:`~sslbench.experiment.estimate` says how long they will take and
:mod:`~sslbench.experiment.executor` runs them resumably (the cell itself runs in
:func:`sslbench.experiment.runner.run_cell`).
"""

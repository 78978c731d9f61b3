"""Results: the record of a cell, the results directory, and the report built from it.

:mod:`~sslbench.results.records` is the record format, :mod:`~sslbench.results.store` a results
directory (records, curves, the flat table), :mod:`~sslbench.results.report` the tables, statistics
and plots, :mod:`~sslbench.results.drawing` skeletons drawn on images.
"""

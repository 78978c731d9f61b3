"""Result tables and plots: strategies x training budgets, with confidence intervals and paired tests.

Every number is a mean over seeds. :mod:`~sslbench.results.report.statistics` holds the intervals and
paired tests, :mod:`~sslbench.results.report.tables` builds the report (rows, labels, baselines, views),
:mod:`~sslbench.results.report.formats` renders it and :mod:`~sslbench.results.report.plots` draws it.
"""

from sslbench.results.report.formats import FORMATS, print_terminal, render
from sslbench.results.report.plots import write_plots
from sslbench.results.report.tables import BASELINE, Report, build_report, part_names

__all__ = ["BASELINE", "FORMATS", "Report", "build_report", "part_names", "print_terminal", "render", "write_plots"]

"""Result tables and plots: strategies x training budgets, with confidence intervals and paired tests.

Every number is a mean over seeds. :mod:`~sslbench.report.statistics` holds the intervals and
paired tests, :mod:`~sslbench.report.tables` builds the report (rows, labels, baselines, views),
:mod:`~sslbench.report.formats` renders it and :mod:`~sslbench.report.plots` draws it.
"""

from sslbench.report.formats import FORMATS, print_terminal, render
from sslbench.report.plots import write_plots
from sslbench.report.tables import BASELINE, Report, build_report, part_names

__all__ = ["BASELINE", "FORMATS", "Report", "build_report", "part_names", "print_terminal", "render", "write_plots"]

"""pytest-benchmark setup: every saved benchmark JSON also says what sslbench ran on.

pytest-benchmark already stores the machine (``machine_info``) and the git commit
(``commit_info``); this adds sslbench's own description (torch version, device, threads,
commit with ``+dirty``) and the load average, since figures from a busy machine are
lower bounds.
"""

from __future__ import annotations

import os

import torch

from sslbench.experiment import environment


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["sslbench"] = environment.describe(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        machine_info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        machine_info["load_average"] = None
    machine_info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")

"""``python -m sslbench``: the command line (also what ``torchrun -m sslbench`` launches)."""

from sslbench.cli.main import main

main()

"""``python -m sslbench``: the command line (also what ``torchrun -m sslbench`` launches)."""

from sslbench.cli import main

main()

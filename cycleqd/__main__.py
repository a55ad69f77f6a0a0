"""``python -m cycleqd``: the command line."""

from cycleqd.cli import main

main()

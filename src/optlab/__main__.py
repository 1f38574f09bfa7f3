"""`python -m optlab` is the `optlab` command."""

from optlab.cli import main

main()

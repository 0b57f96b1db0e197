"""`python -m modmerge`: the same as the `modmerge` command."""

from modmerge.cli import main

main()

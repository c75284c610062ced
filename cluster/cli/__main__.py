"""`python -m cluster.cli ...`: the `prism` command without the console script."""
from cluster.cli.main import main

main()

"""`python -m jaxseg <command> ...`: the CLI where the `jaxseg` console script is not installed
(a source checkout on PYTHONPATH, as on a lent GPU machine)."""

from jaxseg.cli import run

run()

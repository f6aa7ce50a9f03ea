"""`python -m agent ...` is the same as the `aifinops` command."""

from agent.cli import main

main(prog_name="aifinops")

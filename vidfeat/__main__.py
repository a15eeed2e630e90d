"""``python -m vidfeat``: the same command line as the ``vidfeat`` script."""

from vidfeat.cli import main

if __name__ == "__main__":
    main(prog_name="vidfeat")

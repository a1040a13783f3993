"""`python -m graphprune ...` runs the `graphprune` command (for an environment whose
scripts folder is not on PATH)."""
import sys

from graphprune.cli.main import main

if __name__ == "__main__":  # (imported as graphprune.__main__, e.g. by pkgutil walks, it runs nothing)
    sys.exit(main())

"""`python -m graphprune ...` runs the `graphprune` command (for an environment whose
scripts folder is not on PATH)."""
import sys

from graphprune.cli.main import main

sys.exit(main())

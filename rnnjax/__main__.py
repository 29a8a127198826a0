"""`python -m rnnjax ...`: the `rnnjax` command (`rnnjax train`, `sample`, `bench`)."""

import sys

from rnnjax.cli import main

if __name__ == "__main__":
  sys.exit(main())

"""`python -m flows.cli ...`: the same as the `sluice` console script."""

import sys

from flows.cli.main import main

sys.exit(main())

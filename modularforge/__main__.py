"""`python -m modularforge ...`: see `modularforge.cli.main`."""

import sys

from modularforge.cli.main import main

sys.exit(main())

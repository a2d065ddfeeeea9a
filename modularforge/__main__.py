"""`python -m modularforge ...`: see `modularforge.cli`."""

import sys

from .cli import main

sys.exit(main())

"""`python -m mkv` runs the command line."""

import sys

from mkv.cli import main

sys.exit(main())

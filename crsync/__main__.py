"""``python -m crsync``: the crsync command line."""

import sys

from .cli import main

sys.exit(main())

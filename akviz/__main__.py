"""``python -m akviz``: see :mod:`akviz.cli`."""

import sys

from .cli import main

sys.exit(main())

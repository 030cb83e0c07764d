"""``python -m usam`` runs the command line."""

import sys

from usam.cli import main

sys.exit(main())

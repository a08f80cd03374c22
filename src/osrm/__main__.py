"""``python -m osrm`` (and ``accelerate launch -m osrm ...``): the command line."""

import sys

from osrm.cli import main

sys.exit(main())

"""``python -m keras_softkd.grid``: see :mod:`keras_softkd.grid` and ``--help``."""

import sys

from keras_softkd.grid.cli import main

sys.exit(main())

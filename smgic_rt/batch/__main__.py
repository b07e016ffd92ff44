"""``python -m smgic_rt.batch`` = ``smgic-batch``."""

import sys

from .cli import main

sys.exit(main())

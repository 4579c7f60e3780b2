"""``python -m powersam.cli``: the ``powersam`` command."""
import sys

from . import main

sys.exit(main())

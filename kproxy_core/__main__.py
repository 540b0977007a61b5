"""``python -m kproxy_core`` is the ``kproxy`` command."""

import sys

from .cli import main

sys.exit(main())

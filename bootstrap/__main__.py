"""`python -m trace_run.bootstrap`: the same as the trace-bootstrap command."""

import sys

from .cli import main

sys.exit(main())

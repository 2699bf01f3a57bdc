import sys

from trace_run.viewer.cli import main

sys.exit(main())

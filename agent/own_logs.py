"""Which log records are the lines of an export of trace-run's own, left out of the program's logs.

Kept apart from exporthealth: the filter is installed as the SDK is set up, before the SDK's modules may be
imported (they read OTEL_* limits as they load, which the agent checks first).
"""

from __future__ import annotations

import threading

here = threading.local()  # .on: this thread is in an export of ours (exporthealth sets it)


def not_ours(_record) -> bool:
    """A logging filter for the HTTP client's loggers (urllib3's): the lines of an export of ours are left out,
    the program's own requests' kept (a program logging at DEBUG saw "Starting new HTTP connection" for each
    of our batches)."""
    return not getattr(here, "on", False)

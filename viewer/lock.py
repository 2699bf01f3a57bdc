"""One viewer per database file: an exclusive lock on `<db>.lock`, released when the process ends."""

from __future__ import annotations

import os


class Locked(Exception):
    def __init__(self, pid: str = ""):
        super().__init__(pid)
        self.pid = pid


def lock_db(db_path: str):
    """Return the open lock file (keep it open while serving), or raise Locked."""
    import fcntl

    os.makedirs(os.path.dirname(db_path) or ".", exist_ok=True)
    f = open(db_path + ".lock", "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip()[:20]
        f.close()
        raise Locked(pid)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f

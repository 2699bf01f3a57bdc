"""The OTLP/HTTP exporter's pooled connections write only to the sockets they made.

A program that closes every descriptor (`os.closerange`, a daemonizer) and then opens a file can
get the number of a pooled connection's socket: the next batch went into the program's file, or
urllib3, finding that "connection" readable, closed the program's file and the program's next
record went to the collector. Each connection notes its socket (device and inode) when it
connects; before each export and before the pools are closed, a connection whose descriptor is no
longer that socket lets go of the number without closing it, and the next request connects anew.

Both HTTP transports of the SDK (urllib3's, and requests' Session) are urllib3 pools underneath.
The gRPC exporter's sockets belong to gRPC's C core, out of reach here (see README).
"""

from __future__ import annotations

import os
import weakref

from trace_run.core import compat, log
from trace_run.core.guard import Guard

_guard = Guard("exporter connections")
_MARK = "_trace_run_socket"  # on a connection: (weakref to its socket, (st_dev, st_ino))
_ADOPTED = "_trace_run_owning"  # on a pool manager whose pools make noting connections
_classes: dict = {}


def identity(fd: int):
    """(st_dev, st_ino) of what descriptor `fd` is now; None when it is closed."""
    try:
        st = os.fstat(fd)
    except (OSError, ValueError, TypeError):
        return None
    return st.st_dev, st.st_ino


def _identity(sock):
    try:
        return identity(sock.fileno())
    except (OSError, ValueError, AttributeError):
        return None


def _note(conn) -> None:
    sock = conn.sock
    setattr(conn, _MARK, (weakref.ref(sock), _identity(sock)))


def _noting_connection(cls):
    """`cls` (a urllib3 connection class) noting its socket as it connects."""
    sub = _classes.get(cls)
    if sub is None:
        class Noting(cls):
            def connect(self):
                super().connect()
                with _guard:
                    _note(self)

        Noting.__name__ = Noting.__qualname__ = cls.__name__
        sub = _classes[cls] = Noting
    return sub


def _noting_pool(cls):
    sub = _classes.get(cls)
    if sub is None:
        sub = _classes[cls] = type(cls.__name__, (cls,), {"ConnectionCls": _noting_connection(cls.ConnectionCls)})
    return sub


def _managers(exporter) -> list:
    """The urllib3 PoolManagers behind `exporter` (trace-run's or the SDK's OTLP/HTTP exporter)."""
    transport = compat.exporter_transport(exporter)
    found = [compat.transport_pool(transport)]  # the SDK's urllib3 transport
    session = compat.transport_session(transport) or compat.exporter_session(exporter)  # requests
    for adapter in getattr(session, "adapters", {}).values():
        found.append(getattr(adapter, "poolmanager", None))
        found.extend(getattr(adapter, "proxy_manager", {}).values())  # made at the first request via a proxy
    return [m for m in found if hasattr(m, "pools") and hasattr(m, "pool_classes_by_scheme")]


def _adopt(manager) -> None:
    """Pools made from now on make noting connections. A pool made before (a proxy's, at its first
    request) is noted where its connections are first seen."""
    if not getattr(manager, _ADOPTED, False):
        manager.pool_classes_by_scheme = {s: _noting_pool(c) for s, c in manager.pool_classes_by_scheme.items()}
        setattr(manager, _ADOPTED, True)


def _release_if_reused(conn) -> bool:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return False
    noted = getattr(conn, _MARK, None)
    if noted is None or noted[0]() is not sock:  # connected before its pool was adopted
        _note(conn)
        return False
    if _identity(sock) == noted[1]:
        return False
    conn.sock = None
    sock.detach()  # forget the number: closing it would close whatever the program opened there
    conn.close()  # urllib3's own reset; it has no socket left to close
    return True


def release_reused(exporter) -> int:
    """Let go of every pooled connection of `exporter` whose descriptor the program closed (and may
    have opened anew); returns how many. Never raises (but in test mode)."""
    released = 0
    with _guard:
        for manager in _managers(exporter):
            _adopt(manager)
            for key in manager.pools.keys():
                pool = manager.pools.get(key)
                queue = getattr(pool, "pool", None)  # None once the pool is closed
                if queue is None:
                    continue
                with queue.mutex:
                    conns = [c for c in queue.queue if c is not None]
                for conn in conns:
                    released += _release_if_reused(conn)
    if released:
        log.debug("the program closed %d of the exporter's connections (their descriptors are no longer "
                  "its sockets); they are dropped without closing them, and reconnected" % released)
    return released

"""`trace-run view [options]`: start the receiver, the store and the pages in one process."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

PROG = "trace-run view"
MAX_SPANS = 1_000_000


def default_db() -> str:
    """$XDG_DATA_HOME/trace-run/viewer.sqlite3 (~/.local/share/... when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "trace-run", "viewer.sqlite3")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="A local trace viewer: an OTLP receiver, a SQLite store and web pages. "
        "Programs run under trace-run with the default configuration send here with no setting.")
    p.add_argument("--ui-port", type=int, default=16686, help="port of the web pages and JSON API (16686)")
    p.add_argument("--otlp-http-port", type=int, default=4318, help="OTLP/HTTP receiver port (4318)")
    p.add_argument("--otlp-grpc-port", type=int, default=4317, help="OTLP/gRPC receiver port (4317; -1: off)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1); the UI has no authentication")
    p.add_argument("--db", default=None, help="SQLite file (default: %s)" % default_db())
    p.add_argument("--max-spans", type=int, default=MAX_SPANS,
                   help="spans kept; the oldest traces are dropped whole beyond it (%d)" % MAX_SPANS)
    p.add_argument("--print", metavar="TRACE_ID", dest="print_id",
                   help="print one stored trace as a tree and exit")
    return p


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write("%s: %s\n" % (PROG, message))
    return code


def _untraced_reexec(argv: list) -> None:
    """If trace-run's agent started in this interpreter (`trace-run python -m trace_run.viewer`),
    start again without it: the viewer must never trace itself into its own receiver."""
    dirs = sys.__dict__.get("_trace_run_dirs")
    if not dirs:
        return
    env = dict(os.environ)
    real = {os.path.realpath(d) for d in dirs}
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.realpath(p) not in real]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["OTEL_SDK_DISABLED"] = "true"
    os.execve(sys.executable, [sys.executable, "-m", "trace_run.viewer"] + argv, env)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _untraced_reexec(argv)
    args = _parser().parse_args(argv)
    db_path = os.path.abspath(args.db or default_db())
    if args.print_id:
        from .printing import print_trace

        return print_trace(db_path, args.print_id, sys.stdout)
    if args.max_spans < 1:
        return _fail("--max-spans must be at least 1, not %d" % args.max_spans)
    from .lock import Locked, lock_db

    try:
        lock = lock_db(db_path)
    except Locked as exc:
        return _fail("%s is in use by another viewer%s; stop it or pass --db with another file"
                     % (db_path, " (pid %s)" % exc.pid if exc.pid else ""))
    except OSError as exc:
        return _fail("cannot open %s: %s" % (db_path, exc))
    try:
        return _serve(args, db_path)
    finally:
        lock.close()


def _serve(args, db_path: str) -> int:
    import sqlite3

    from . import http_server
    from .store import Store

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # from here on, a clean stop: the store is closed
        signal.signal(sig, lambda *_: stop.set())
    try:
        store = Store(db_path, max_spans=args.max_spans).start()
    except sqlite3.Error as exc:
        return _fail("cannot use %s as the store: %s" % (db_path, exc))
    servers, serving = [], []
    grpc_server = None
    try:
        try:
            ui = http_server.make_server(args.host, args.ui_port, store)
            servers.append(ui)
            otlp = http_server.make_server(args.host, args.otlp_http_port, store)
            servers.append(otlp)
        except OSError as exc:
            return _fail("cannot listen on %s: %s" % (args.host, exc))
        grpc_port = None
        if args.otlp_grpc_port >= 0:
            try:
                # gRPC's C core would log a bind failure of its own beside our one line
                os.environ.setdefault("GRPC_VERBOSITY", "NONE")
                from . import grpc_server as grpc_module

                grpc_server, grpc_port = grpc_module.make_server(args.host, args.otlp_grpc_port, store)
            except ImportError as exc:
                sys.stderr.write("%s: OTLP/gRPC is off (%s); OTLP/HTTP works\n" % (PROG, exc))
            except (OSError, RuntimeError) as exc:
                return _fail("cannot listen for OTLP/gRPC on %s:%d: %s" % (args.host, args.otlp_grpc_port, exc))
        for server in servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
            serving.append(server)
        _banner(args, ui.server_address[1], otlp.server_address[1], grpc_port, db_path, store.span_count)
        while not stop.wait(1.0):
            pass
        return 0
    finally:
        for server in servers:
            if server in serving:  # shutdown() waits for serve_forever, which must have started
                server.shutdown()
            server.server_close()
        if grpc_server is not None:
            grpc_server.stop(1).wait(2)
        store.close()


def _banner(args, ui_port: int, http_port: int, grpc_port, db_path: str, span_count: int) -> None:
    host = args.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[%s]" % host if ":" in host else host)
    lines = [
        "trace-run view: open http://%s:%d/" % (shown, ui_port),
        "  OTLP/HTTP  http://%s:%d/v1/traces" % (shown, http_port),
        "  OTLP/gRPC  %s" % ("%s:%d" % (shown, grpc_port) if grpc_port else "off"),
        "  store      %s (%d spans, at most %d)" % (db_path, span_count, args.max_spans),
    ]
    if http_port == 4318:
        lines.append("Programs run as `trace-run python app.py` send here with no setting (the default endpoint).")
    else:
        lines.append("Send programs here with: OTEL_EXPORTER_OTLP_ENDPOINT=http://%s:%d trace-run python app.py"
                     % (shown, http_port))
    if host not in ("127.0.0.1", "localhost", "::1"):  # before the banner, which says "ready"
        sys.stderr.write("%s: warning: listening on %s: the UI and the receivers have no authentication; "
                         "anyone who can reach this address can read and send traces\n" % (PROG, host))
        sys.stderr.flush()
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()

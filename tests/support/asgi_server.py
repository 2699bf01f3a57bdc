"""An ASGI app served by a real uvicorn under trace-run, asked a few requests, its spans collected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from . import TRACE_RUN, clean_env, free_port, http_get, wait_port
from .otlp_receiver import Receiver


def serve(folder, source: str, requests: list, python: str = sys.executable, expect: int = 0, port: int = 0,
          **env) -> tuple:
    """Run `asgiapp:app` (`source`; APP_PORT in it becomes the port) under `trace-run python -m uvicorn`, make
    each (path, headers) request: ([(status, body)], spans, stderr). Waits for `expect` SERVER spans, then a
    little more, for a second span per request to arrive too."""
    port = port or free_port()
    with open(os.path.join(str(folder), "asgiapp.py"), "w") as f:
        f.write(textwrap.dedent(source).replace("APP_PORT", str(port)))
    rx = Receiver().start()
    proc = subprocess.Popen([TRACE_RUN, python, "-m", "uvicorn", "asgiapp:app", "--port", str(port)],
                            cwd=str(folder), env=clean_env(**rx.env(OTEL_SERVICE_NAME="asgi-app", **env)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_port(port, proc)
        answers = [http_get("http://127.0.0.1:%d%s" % (port, path), headers) for path, headers in requests]
        rx.wait_for(lambda s: sum(x.kind == "SERVER" for x in s) >= expect, timeout=20)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        err = proc.stderr.read()
        proc.stderr.close()
        rx.stop()
    assert "instrumentation error" not in err, err
    return answers, list(rx.spans), err


def servers(spans) -> list:
    return [s for s in spans if s.kind == "SERVER"]

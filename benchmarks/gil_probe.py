"""How long the export thread keeps the GIL from a thread that wants it, per exported batch.

    python benchmarks/gil_probe.py [--venv PATH] [--sizes 512,128] [--batches 40] [--repeats 1]
                                   [--work US] [--json]

A request thread that comes back from a socket read waits for the GIL while another thread runs
Python (up to the 5 ms switch interval). Here a probe thread stands in for it: it sleeps 100 us
in a loop and records how late each wake-up is, while trace-run's export thread sends a batch of
spans (OTLP/HTTP, the agent as `trace-run python` builds it) to a lean local receiver. The main
thread makes SIZE-1 spans, opens the probe's window, ends the SIZE-th span (which wakes the export
thread) and sleeps 50 ms while the batch is sent: only the export thread and the probe run then.
"control" windows are the same without a batch. The probe sleeps in a few lines of C that read the
clock as the OS wakes it (before the GIL is taken back), so that its lateness splits into the OS's
("late") and the wait for the GIL ("gil"); where no C compiler is found, only the total is known.
When a wait for the GIL is over LATE_US, the export thread's innermost frames are kept: where it was
when it let go. With --work, each wake-up is a request (Python in four parts, the GIL let go between
them) and "gil" is its time from the wake-up to its end.
Everything runs pinned to one CPU (taskset -c 1), the receiver too, niced so that the probe preempts it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE_SLEEP = 100e-6
LATE_US = 300
ATTRS = {"http.request.method": "GET", "url.path": "/plain", "url.scheme": "http", "server.address": "127.0.0.1",
         "server.port": 8000, "network.protocol.version": "1.1", "http.route": "/plain",
         "http.response.status_code": 200, "client.address": "127.0.0.1", "user_agent.original": "wrk"}


# -- the receiver: HTTP/1.1 keep-alive, answers 200 with an empty body; counts requests and bytes -----


def sink(portfile: str) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stats = {"requests": 0, "bytes": 0}
    with open(portfile + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.replace(portfile + ".tmp", portfile)

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        chunk = bytearray(1 << 20)
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    n = conn.recv_into(chunk)
                    if not n:
                        return
                    buf += memoryview(chunk)[:n]
                end = buf.index(b"\r\n\r\n")
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[:end + 4]
                length = 0
                for line in lines[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                while len(buf) < length:  # (into one buffer: no copy of what came before per read)
                    n = conn.recv_into(chunk)
                    if not n:
                        return
                    buf += memoryview(chunk)[:n]
                del buf[:length]
                if lines[0].startswith(b"GET /stats"):
                    out = json.dumps(stats).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
                    continue
                stats["requests"] += 1
                stats["bytes"] += length
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def sink_stats(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        data = b""
        while not data.endswith(b"}"):
            data += s.recv(65536)
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


# -- the measured process (run under trace-run) --------------------------------------------------------


_SLEEP_C = r"""
#include <time.h>
long long probe_sleep(long ns) {  /* sleeps, then reads the clock: before the GIL is taken back */
    struct timespec t = {0, ns}, w;
    nanosleep(&t, 0);
    clock_gettime(CLOCK_MONOTONIC, &w);
    return (long long)w.tv_sec * 1000000000LL + w.tv_nsec;
}
"""


def _sleep_reading_the_wake_up():
    """probe_sleep(ns) -> the monotonic ns at which the OS woke the thread (ctypes lets go of the GIL
    around it), so that a wake-up's lateness splits into the OS's and the wait for the GIL; None
    where no C compiler is found (then only the total is known)."""
    import ctypes
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    folder = tempfile.mkdtemp(prefix="gilprobe-c-")
    src, lib = os.path.join(folder, "s.c"), os.path.join(folder, "s.so")
    with open(src, "w") as f:
        f.write(_SLEEP_C)
    if subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", lib, src]).returncode:
        return None
    fn = ctypes.CDLL(lib).probe_sleep
    fn.restype, fn.argtypes = ctypes.c_longlong, [ctypes.c_long]
    return fn


class Probe(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True, name="probe")
        self.window = threading.Event()
        self.samples: list = []  # (window label, window number, lateness, GIL wait), in us
        self.number = 0
        self.where: dict = {}  # label -> {frames: count} of long waits for the GIL
        self.label = ""
        self.export_thread = None
        self.native = _sleep_reading_the_wake_up()
        self.work = 0  # us of Python per wake-up (calibrate): 0, the probe only waits for the GIL

    def run(self) -> None:
        clock, sleep, native = time.monotonic_ns, time.sleep, self.native
        ns = int(PROBE_SLEEP * 1e9)
        while True:
            self.window.wait()
            label, number = self.label, self.number
            t0 = clock()
            if native is not None:
                woke = native(ns)
            else:
                sleep(PROBE_SLEEP)
                woke = None
            t1 = clock()
            late = (t1 - t0 - ns) / 1e3
            gil = (t1 - woke) / 1e3 if woke is not None else late
            if self.work:  # a request: from its arrival (the wake-up) to its end
                self._request()
                gil = (clock() - (woke if woke is not None else t1)) / 1e3
            if self.window.is_set() and self.number == number:  # (not a wake-up in the next window)
                self.samples.append((label, number, late, gil))
                if gil > LATE_US + self.work:
                    self._note(label)

    def _request(self) -> None:
        """~`work` us of Python in four parts, the GIL let go between them (a pipe written and read, as
        a request thread's socket calls do): where the export thread can take it, as in a server."""
        n, r, w = self._loops, self._pipe[0], self._pipe[1]
        for _ in range(4):
            sum(range(n))
            os.write(w, b"x")
            os.read(r, 1)

    def calibrate(self, work_us: float) -> None:
        """Sets how many loops one part of a request's work is (work_us / 4 of CPU here, unloaded)."""
        self.work, self._pipe = work_us, os.pipe()
        if not work_us:
            return
        n, took = 1000, 0.0
        while took < 200:
            n *= 2
            took = min(self._time(n) for _ in range(9))  # the least: the machine's load left out
        self._loops = max(1, int(n * (work_us / 4) / took))

    @staticmethod
    def _time(n: int) -> float:
        t0 = time.thread_time_ns()
        sum(range(n))
        return (time.thread_time_ns() - t0) / 1e3

    def open(self, label: str) -> None:
        self.label, self.number = label, self.number + 1
        self.window.set()

    def close(self) -> None:
        self.window.clear()
        self.number += 1

    def _note(self, label: str) -> None:
        t = self.export_thread
        frame = sys._current_frames().get(t.ident) if t is not None else None
        names = []
        while frame is not None and len(names) < 3:
            code = frame.f_code
            names.append("%s:%s:%d" % (os.path.basename(code.co_filename), code.co_name, frame.f_lineno))
            frame = frame.f_back
        key = " < ".join(names) or "?"
        where = self.where.setdefault(label, {})
        where[key] = where.get(key, 0) + 1


def _spans(tracer, n: int) -> None:
    from opentelemetry.trace import SpanKind

    for _ in range(n):
        with tracer.start_as_current_span("GET /plain", kind=SpanKind.SERVER, attributes=ATTRS):
            pass


def _wait_requests(port: int, want: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while sink_stats(port)["requests"] < want:
        if time.time() > deadline:
            raise SystemExit("the receiver did not get request %d" % want)
        time.sleep(0.005)


def measure(port: int, size: int, batches: int, work_us: float = 0) -> dict:
    from opentelemetry import trace

    tracer = trace.get_tracer("probe")
    probe = Probe()
    probe.calibrate(work_us)
    probe.start()
    sent = sink_stats(port)["requests"]
    for i in range(batches + 2):  # the first two warm up (the exporter is built on the first span end)
        _spans(tracer, size - 1)
        time.sleep(0.02)
        probe.open("control" if i >= 2 else "warm")
        time.sleep(0.03)  # nothing exports: the timer's own lateness
        probe.close()
        if probe.export_thread is None:
            probe.export_thread = next((t for t in threading.enumerate() if t.name.startswith("OtelBatch")), None)
        probe.open("export" if i >= 2 else "warm")
        _spans(tracer, 1)  # the SIZE-th span: the export thread wakes
        sent += 1
        time.sleep(0.05)  # a batch takes a few ms; nothing else of ours runs meanwhile
        probe.close()
        _wait_requests(port, sent)  # (it arrived: else the window was too short, and this says so)
    out: dict = {"size": size, "batches": batches, "split": probe.native is not None, "work_us": work_us}
    for label in ("control", "export"):
        mine = [x for x in probe.samples if x[0] == label]
        out[label] = {"n": len(mine), "late": _stats(mine, 2, LATE_US), "gil": _stats(mine, 3, LATE_US + work_us),
                      "where": sorted(probe.where.get(label, {}).items(), key=lambda kv: -kv[1])[:6]}
    return out


def _stats(samples: list, field: int, over: float) -> dict:
    """Quantiles of one field of the samples, and of each window's largest and 5th largest (a server's
    p99 is about the 5th worst of the 512 requests one 512-span batch is made of); how many are over `over`."""
    values = sorted(x[field] for x in samples)
    per_window: dict = {}
    for x in samples:
        per_window.setdefault(x[1], []).append(x[field])
    windows = sorted(max(v) for v in per_window.values())
    fifth = sorted(sorted(v)[-5] if len(v) >= 5 else min(v) for v in per_window.values())
    return {"p50": _q(values, 0.5), "p99": _q(values, 0.99), "p999": _q(values, 0.999),
            "max": values[-1] if values else float("nan"), "over": sum(1 for v in values if v > over),
            "window_max_p50": _q(windows, 0.5), "window_max_p90": _q(windows, 0.9),
            "window_5th_p50": _q(fifth, 0.5), "window_5th_p90": _q(fifth, 0.9)}


def _q(values: list, q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


# -- driver ---------------------------------------------------------------------------------------------


def _rows(result: dict, venv: str) -> str:
    """Lateness of the probe's wake-ups and, apart, its wait for the GIL (us): quantiles, and the median and
    90th percentile of each window's largest; then where the export thread was when a long wait ended."""
    lines = []
    for label in ("control", "export"):
        r = result[label]
        work = result.get("work_us", 0)
        for what in ("late", "gil") if result["split"] or work else ("late",):
            x = r[what]
            name = "req" if what == "gil" and work else what  # with --work: a request's time, arrival to end
            lines.append("%-28s %5d %-7s %-4s n=%5d  p50 %5.0f  p99 %5.0f  p99.9 %5.0f  max %5.0f  >%dus %4d  "
                         "window max p50 %5.0f p90 %5.0f  5th p50 %5.0f" % (
                             os.path.basename(os.path.dirname(venv.rstrip("/"))) + "/" + os.path.basename(venv),
                             result["size"], label, name, r["n"], x["p50"], x["p99"], x["p999"], x["max"],
                             LATE_US + (work if what == "gil" else 0), x["over"], x["window_max_p50"],
                             x["window_max_p90"], x["window_5th_p50"]))
        lines += ["      %4d  %s" % (n, where) for where, n in r["where"][:5]]
    return "\n".join(lines)



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default=os.path.join(HERE, ".venvs", "tracerun"))
    ap.add_argument("--sizes", default="512,128")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--env", default="", help="K=V,K2=V2 for the measured process")
    ap.add_argument("--json", action="store_true", help="one JSON line per run, not the table")
    ap.add_argument("--work", type=float, default=0,
                    help="us of Python per wake-up, in 4 parts with the GIL let go between them: the probe is then "
                         "a request thread, and 'gil' the time from its wake-up (a request's arrival) to its end")
    args = ap.parse_args()
    portfile = os.path.join(tempfile.mkdtemp(prefix="gilprobe-"), "port")
    pin = ["taskset", "-c", "1"]
    # niced: on the probe's CPU its work must not read as the export thread's (the probe preempts it)
    receiver = subprocess.Popen(pin + ["nice", "-n", "19", sys.executable, __file__, "sink", portfile])
    try:
        while not os.path.exists(portfile):
            time.sleep(0.01)
        port = int(open(portfile).read())
        for _ in range(args.repeats):
            for size in map(int, args.sizes.split(",")):
                env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
                env.update({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % port,
                            "OTEL_SERVICE_NAME": "gil-probe", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(size),
                            "OTEL_BSP_MAX_QUEUE_SIZE": str(max(2048, size)), "OTEL_BSP_SCHEDULE_DELAY": "60000"})
                for item in filter(None, args.env.split(",")):
                    key, _, value = item.partition("=")
                    env[key] = value
                cmd = pin + [os.path.join(args.venv, "bin", "trace-run"), os.path.join(args.venv, "bin", "python"),
                             __file__, "measure", str(port), str(size), str(args.batches), str(args.work)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.stderr.write(out.stderr)
                    raise SystemExit("measure failed")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps(result) if args.json else _rows(result, args.venv), flush=True)
    finally:
        receiver.terminate()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "sink":
        sink(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "measure":
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))))
    else:
        main()

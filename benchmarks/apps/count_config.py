"""A gunicorn config file: count the bytecodes (or Python calls) the worker's main thread runs per
request, in the real server (bytecodes.py --server; its in-process counts use `counter` too).

Requests COUNT_START to COUNT_STOP are counted, from the server's accept to its close, gunicorn's own
parsing and writing included; then {function: count per request} goes to COUNT_OUT as JSON.
"""

import collections
import json
import os
import sys

_START = int(os.environ.get("COUNT_START", "300"))
_STOP = int(os.environ.get("COUNT_STOP", "400"))
_EVENT = os.environ.get("COUNT_EVENT", "opcode")  # "opcode": bytecodes; "call": Python calls
_seen = [0]


def counter(event: str) -> tuple:
    """(a trace function counting `event`s per function, the Counter it counts into): bytecodes.py's too."""
    counts: collections.Counter = collections.Counter()

    def on_event(frame, kind, arg):
        frame.f_trace_opcodes = event == "opcode"
        if kind == event:
            code = frame.f_code
            where = code.co_filename.split("site-packages/")[-1]
            counts["%s (%s:%d)" % (code.co_name, where, code.co_firstlineno)] += 1
        return on_event

    return on_event, counts


_on_event, _counts = counter(_EVENT)


def _frames(trace) -> None:
    """The frames already running (the worker's loop) are traced too, not only the calls made from now."""
    frame = sys._getframe(2)
    while frame is not None:
        frame.f_trace = trace
        frame.f_trace_opcodes = trace is not None and _EVENT == "opcode"
        frame = frame.f_back


def pre_request(worker, req) -> None:
    _seen[0] += 1
    if _seen[0] == _START:
        _frames(_on_event)
        sys.settrace(_on_event)
    elif _seen[0] == _STOP:
        sys.settrace(None)
        _frames(None)
        per = {name: n / (_STOP - _START) for name, n in _counts.items()}
        with open(os.environ["COUNT_OUT"] + ".tmp", "w") as out:
            json.dump(per, out)
        os.replace(os.environ["COUNT_OUT"] + ".tmp", os.environ["COUNT_OUT"])

"""trace-run's own messages: one line each on stderr, prefixed `trace-run:`.

Not the `logging` module: it costs ~10 ms to import and the program may
configure it in ways that would swallow or duplicate our lines.
"""

import sys

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_threshold = 20  # the agent sets OTEL_LOG_LEVEL's (through the registry) before it says anything
_once: set = set()


def set_level(name: str) -> None:
    global _threshold
    _threshold = _LEVELS.get(name, 20)


def _emit(level: int, label: str, msg: str) -> None:
    if level < _threshold:
        return
    try:
        sys.stderr.write("trace-run: %s%s\n" % (label, msg))
        sys.stderr.flush()
    except Exception:  # a closed stderr must not break the host
        pass


def debug(msg: str) -> None:
    _emit(10, "debug: ", msg)


def info(msg: str) -> None:
    _emit(20, "", msg)


def warning(msg: str) -> None:
    _emit(30, "warning: ", msg)


def error(msg: str) -> None:
    _emit(40, "error: ", msg)


def warning_once(key: str, msg: str) -> None:
    if key not in _once:
        _once.add(key)
        warning(msg)

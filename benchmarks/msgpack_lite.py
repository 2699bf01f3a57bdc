"""A small MessagePack decoder (stdlib only), enough to count the spans ddtrace sends.

The Datadog agent protocol (`/v0.4/traces`, `/v0.5/traces`) is MessagePack; the sink decodes it
after a run, so that the harness needs no package of its own.
"""

from __future__ import annotations

import struct

_FIXED = {  # type byte -> (struct format, size) of the scalars that follow it
    0xCA: (">f", 4), 0xCB: (">d", 8),
    0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}
_LENGTH = {1: ">B", 2: ">H", 4: ">I"}


def unpackb(data: bytes):
    """The object encoded in `data` (str for str, bytes for bin, (code, bytes) for ext)."""
    value, end = _decode(memoryview(data), 0)
    if end != len(data):
        raise ValueError("%d bytes left over after the object" % (len(data) - end))
    return value


def _length(buf, i: int, size: int) -> tuple:
    return struct.unpack_from(_LENGTH[size], buf, i)[0], i + size


def _decode(buf, i: int) -> tuple:
    b = buf[i]
    i += 1
    if b <= 0x7F:
        return b, i
    if b >= 0xE0:
        return b - 0x100, i
    if 0x80 <= b <= 0x8F:
        return _map(buf, i, b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return _array(buf, i, b & 0x0F)
    if 0xA0 <= b <= 0xBF:
        n = b & 0x1F
        return str(buf[i:i + n], "utf-8", "replace"), i + n
    if b == 0xC0:
        return None, i
    if b in (0xC2, 0xC3):
        return b == 0xC3, i
    if b in _FIXED:
        fmt, size = _FIXED[b]
        return struct.unpack_from(fmt, buf, i)[0], i + size
    if b in (0xD9, 0xDA, 0xDB):  # str 8/16/32
        n, i = _length(buf, i, {0xD9: 1, 0xDA: 2, 0xDB: 4}[b])
        return str(buf[i:i + n], "utf-8", "replace"), i + n
    if b in (0xC4, 0xC5, 0xC6):  # bin 8/16/32
        n, i = _length(buf, i, {0xC4: 1, 0xC5: 2, 0xC6: 4}[b])
        return bytes(buf[i:i + n]), i + n
    if b in (0xDC, 0xDD):
        n, i = _length(buf, i, 2 if b == 0xDC else 4)
        return _array(buf, i, n)
    if b in (0xDE, 0xDF):
        n, i = _length(buf, i, 2 if b == 0xDE else 4)
        return _map(buf, i, n)
    if 0xD4 <= b <= 0xD8:  # fixext 1/2/4/8/16
        n = 1 << (b - 0xD4)
        return (struct.unpack_from(">b", buf, i)[0], bytes(buf[i + 1:i + 1 + n])), i + 1 + n
    if b in (0xC7, 0xC8, 0xC9):  # ext 8/16/32
        n, i = _length(buf, i, {0xC7: 1, 0xC8: 2, 0xC9: 4}[b])
        return (struct.unpack_from(">b", buf, i)[0], bytes(buf[i + 1:i + 1 + n])), i + 1 + n
    raise ValueError("unknown MessagePack type byte 0x%02x" % b)


def _array(buf, i: int, n: int) -> tuple:
    out = []
    for _ in range(n):
        v, i = _decode(buf, i)
        out.append(v)
    return out, i


def _map(buf, i: int, n: int) -> tuple:
    out = {}
    for _ in range(n):
        k, i = _decode(buf, i)
        v, i = _decode(buf, i)
        out[k] = v
    return out, i


PRIORITY = "_sampling_priority_v1"


def datadog_spans(path: str, body: bytes) -> list:
    """(span name, kept) for each span of a Datadog agent payload, v0.4 or v0.5.

    `kept` is what the agent keeps: the trace chunk's sampling priority > 0 (ddtrace sends the
    traces its sampler rejected too, with priority <= 0, and the agent drops them)."""
    payload = unpackb(body)
    out = []
    if path.startswith("/v0.5/"):
        strings, traces = payload
        for trace in traces:
            names, keep = [], None
            for span in trace:
                names.append(strings[span[1]])
                metrics = {strings[k]: v for k, v in span[10].items()}
                if PRIORITY in metrics:
                    keep = metrics[PRIORITY] > 0
            out += [(n, keep is not False) for n in names]
        return out
    for trace in payload:
        names, keep = [], None
        for span in trace:
            names.append(span.get("name", ""))
            metrics = span.get("metrics") or {}
            if PRIORITY in metrics:
                keep = metrics[PRIORITY] > 0
        out += [(n, keep is not False) for n in names]
    return out

"""The collector's answer is read up to ANSWER_CAP bytes, never whole.

A successful OTLP answer is a few bytes and a partial-success or error body a
few KiB; the SDK's transports read the whole body into memory, so a collector
(or a proxy in front of it) answering 200 with 300 MB grew the program by 300 MB.
These are the SDK's urllib3 and requests transports streaming the answer
instead: at most ANSWER_CAP bytes are read, and a connection whose answer was
not read to its end is closed rather than reused. gRPC answers are capped by
the channel option in `GRPC_OPTIONS`.
"""

from __future__ import annotations

from trace_run.core import compat

from . import unreachable
from .otlp_encoder import hand_over

ANSWER_CAP = 64 * 1024
GRPC_OPTIONS = (("grpc.max_receive_message_length", ANSWER_CAP),)


class _Answer:
    """What the SDK's result classes read from a response (body, headers), holding the capped body."""

    __slots__ = ("data", "headers")

    def __init__(self, data: bytes, headers):
        self.data = data
        self.headers = headers

    @property
    def content(self) -> bytes:
        return self.data

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    def json(self):
        import json

        return json.loads(self.data)


def _read_capped(raw) -> tuple:
    """(at most ANSWER_CAP bytes of the body, whether that was all of it); never raises."""
    try:
        data = raw.read(ANSWER_CAP + 1, decode_content=False) or b""
    except Exception:
        return b"", False
    return data[:ANSWER_CAP], len(data) <= ANSWER_CAP


def capped(transport_class: type) -> type:
    """`transport_class` (the SDK's Urllib3HTTPTransport or RequestsHTTPTransport) reading answers capped.
    Where the SDK keeps its pool or session elsewhere (core.compat finds none), its own request runs."""
    how = {"Urllib3HTTPTransport": (compat.transport_pool, _urllib3_request),
           "RequestsHTTPTransport": (compat.transport_session, _requests_request)}.get(transport_class.__name__)
    if how is None:
        return transport_class
    client_of, send = how

    def request(self, method, url, *, headers=None, timeout=None, data=None):
        client = client_of(self)
        if client is None:
            return transport_class.request(self, method, url, headers=headers, timeout=timeout, data=data)
        return send(client, method, url, headers, timeout, data)

    name = "Capped" + transport_class.__name__.replace("HTTPTransport", "Transport")
    return type(name, (transport_class,), {"request": request})


def _urllib3_request(pool, method, url, headers, timeout, data):
    import urllib3

    Urllib3HTTPResult = compat.http_transport("urllib3")[1]
    try:
        response = pool.request(
            method=method, url=url, headers=headers, body=data,
            timeout=urllib3.Timeout(total=timeout) if timeout is not None else None,
            preload_content=False,
        )
    except Exception as error:
        unreachable.note(error)
        return Urllib3HTTPResult(error=error)
    hand_over()  # the answer's head was read and parsed (~0.25 ms of the GIL): the rest is a stretch of its own
    body, whole = _read_capped(response)
    try:
        if not whole:
            response.close()  # unread bytes: this connection is not reused
        response.release_conn()
    except Exception:
        pass
    return Urllib3HTTPResult(status_code=response.status, reason=response.reason,
                             response=_Answer(body, response.headers))


def _requests_request(session, method, url, headers, timeout, data):
    RequestsHTTPResult = compat.http_transport("requests")[1]
    try:
        response = session.request(method=method, url=url, headers=headers, data=data, timeout=timeout,
                                   allow_redirects=False, stream=True)
    except Exception as error:
        unreachable.note(error)
        return RequestsHTTPResult(error=error)
    body, whole = _read_capped(response.raw)
    try:
        if whole:
            response.raw.release_conn()
        else:
            response.close()  # unread bytes: this connection is not reused
    except Exception:
        pass
    return RequestsHTTPResult(status_code=response.status_code, reason=response.reason,
                              response=_Answer(body, response.headers))

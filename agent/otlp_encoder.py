"""OTLP/protobuf encoding of finished spans, written straight to bytes.

The official encoder builds a protobuf object per span, attribute and value and
then serializes the tree: ~20-27 us per span on the export thread, holding the
GIL, which is what a request waiting for the GIL pays in latency. This writer
produces the same bytes as `encode_spans(spans).SerializePartialToString()`
(tests decode and compare both, byte for byte) in a fraction of the time
(benchmarks/microspan.py), and yields the GIL between small slices of a batch.
In trace-run's pipeline each span is encoded as it ends (`Encoder.preencode`,
see `Encoded` for why) and `encode` only frames a batch of them.
`OTEL_TRACE_RUN_OTLP_ENCODER=sdk` goes back to the official encoder.

A finished span of trace-run's own class is encoded, and a batch of Encoded
items framed, in C where the optional extension was built (agent/_otlp_native.c:
the common case, the same bytes); what it declines, and everything with
`OTEL_TRACE_RUN_NATIVE_ENCODER=false`, is done here.

Field numbers are those of opentelemetry/proto/{collector/trace,trace,common,
resource}/v1/*.proto.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Callable, Optional

from trace_run.core import log

try:
    from trace_run.agent._otlp_native import encode_span as _NATIVE_SPAN
    from trace_run.agent._otlp_native import preencode as _NATIVE_PREENCODE
except ImportError:  # not built (an install without a C compiler): all is encoded in Python
    _NATIVE_SPAN = _NATIVE_PREENCODE = None
try:
    from trace_run.agent._otlp_native import untrack
except ImportError:  # (queued Encoded items made in Python, and batches, are then tracked by the garbage collector)
    def untrack(item) -> None:
        """An Encoded, or a tuple of untracked ones, left out of the garbage collector's lists (in C only)."""
try:
    from trace_run.agent._otlp_native import frame as _NATIVE_FRAME
except ImportError:  # Encoder.encode's loop in Python only
    _NATIVE_FRAME = None

SLICE = 128  # spans encoded between two GIL hand-overs
PAUSE_S = 0.0001  # a real sleep: a thread waiting for the GIL takes it (sleep(0) rarely hands it over)

_CACHE_MAX = 2048  # cached encoded attributes (key, short str value); bounded memory
_CACHEABLE_LEN = 128
_BLOCK_TYPES = frozenset((str, int))  # attribute blocks kept whole (Encoder._span_attributes)
_BLOCK_MAX_BYTES = 1024

_VARINT_1 = [bytes((i,)) for i in range(128)]
_pack_times = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), fixed64
_pack_double = struct.Struct("<d").pack
_pack_u64 = struct.Struct("<Q").pack
_FLAGS = (b"\x85\x01\x00\x01\x00\x00", b"\x85\x01\x00\x03\x00\x00")  # field 16 fixed32: 0x100 | 0x200
_EMPTY_STATUS = b"\x7a\x00"
_tuple_new = tuple.__new__
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


SLOW_HAND_OVER_S = 0.002  # a hand-over that took this long waited for the switch interval (5 ms) to get the GIL back
SKIP_S = 0.5  # and then none for this long
_skip_until = 0.0


def hand_over() -> None:
    """Let a thread that waits for the GIL run (between two stretches of the export thread's Python).

    A server's threads let go of the GIL at every socket call, and the export thread has it back in
    a fraction of a millisecond. A program thread that never blocks does not: the export thread
    waits for the switch interval (5 ms) at each hand-over: the queue overflowed in a CPU-bound
    program (benchmarks/README.md, the GIL section), whose thread waits for the export thread's
    Python all the same, in more and shorter pieces. So a hand-over that took SLOW_HAND_OVER_S
    stops them for SKIP_S."""
    global _skip_until
    start = time.monotonic()
    if start < _skip_until:
        return
    time.sleep(PAUSE_S)
    end = time.monotonic()
    if end - start >= SLOW_HAND_OVER_S:
        _skip_until = end + SKIP_S


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINT_1[n] if n >= 0 else _varint(n + (1 << 64))
    if n < 16384:  # (a span's length, mostly)
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_VARINT_1[n] if n < 128 else _varint(n)) + payload


def _value(value: Any) -> bytes:
    """An AnyValue message (its oneof member is written even when it holds the default)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError("Value out of range: %d" % value)
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join([_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError("Invalid type %s of value %r" % (type(value), value))


def _key_value(key: str, value: Any) -> bytes:
    out = _field(b"\x0a", key.encode("utf-8")) if key else b""
    return out + _field(b"\x12", _value(value))


class Encoded(tuple):
    """A span encoded as it ends: (data, resource, instrumentation_scope). Queued until its batch is
    exported, a span is ~10 objects that age through the garbage collector's generations and make its
    full collections (tens of ms at a time) frequent; this is one object and ~250 bytes. A tuple: made
    and read without running Python code."""

    __slots__ = ()

    def __new__(cls, data: bytes, resource, instrumentation_scope) -> Encoded:
        return _tuple_new(cls, (data, resource, instrumentation_scope))

    data = property(itemgetter(0))
    resource = property(itemgetter(1))
    instrumentation_scope = property(itemgetter(2))


class Encoder:
    """Holds what is worth keeping between batches: encoded resources, scopes and
    attributes whose value is a short string (`db.system.name=postgresql`)."""

    def __init__(self, pause: bool = True, native: Optional[bool] = None):
        """`pause`: hand the GIL over between slices of a batch (on an export thread; see hand_over).
        `native`: own spans encoded, and batches of Encoded framed, in C where the extension is built (None: as
        configured)."""
        self._pause = pause
        if native is None:
            from trace_run.core import config

            native = config.get("OTEL_TRACE_RUN_NATIVE_ENCODER")
        self._native, self._native_preencode = (_NATIVE_SPAN, _NATIVE_PREENCODE) if native else (None, None)
        self._frame = _NATIVE_FRAME if native else None  # encode's loop over Encoded items, in C
        self._attr_caches: dict = {}  # field tag -> {(key, value): encoded field}
        self._names: dict = {}  # span name -> (kind, encoded name and kind fields)
        self._heads: dict = {}  # a span's length -> its field's header in a request (tag, length)
        self._resource_cache: dict = {}  # id -> (resource, bytes), see _cached
        self._scope_cache: dict = {}
        self._blocks: dict = {}  # a span's attributes, all str or int, as items -> their encoded fields, joined

    @property
    def native_preencode(self) -> Optional[Callable[[Any], Any]]:
        """The C function `preencode` tries first (None: not built, or switched off): its answer or None."""
        return self._native_preencode

    def _attributes(self, tag: bytes, attributes) -> list:
        if not attributes:
            return []
        # BoundedAttributes is a MutableMapping whose items() runs Python code per key; its dict does not
        return self._attribute_fields(tag, getattr(attributes, "_dict", attributes))

    def _attribute_fields(self, tag: bytes, attributes: Mapping) -> list:
        """The encoded key-value fields of `attributes` (a dict, or any mapping)."""
        if not attributes:
            return []
        out = []
        append = out.append
        cache = self._attr_caches.get(tag)
        if cache is None:
            cache = self._attr_caches[tag] = {}
        get = cache.get
        for pair in attributes.items():  # the (key, value) pair is the cache's key as it is
            value = pair[1]
            kind = type(value)
            # str and int values never compare equal to each other; bool is left out (True == 1)
            if kind is str:
                cacheable = len(value) <= _CACHEABLE_LEN
            else:
                cacheable = kind is int
            item = get(pair) if cacheable else None
            if item is None:
                key = pair[0]
                try:
                    item = _field(tag, _key_value(key, value))
                except Exception as exc:  # the official encoder logs and skips the attribute too
                    log.debug("attribute %s not encoded: %s" % (key, exc))
                    continue
                if cacheable:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()  # high-cardinality values: start over rather than grow
                    cache[pair] = item
            append(item)
        return out

    def _span_attributes(self, attributes: dict):
        """A span's encoded attribute fields. Spans made by the same code mostly carry the same attributes
        (a query, its database and server): where every value is a str or an int, the whole block is
        kept by its items (one lookup, not one per attribute). Other types are never kept: True == 1.0
        == 1, and each encodes differently."""
        if not _BLOCK_TYPES.issuperset(map(type, attributes.values())):
            return self._attribute_fields(b"\x4a", attributes)
        items = tuple(attributes.items())
        block = self._blocks.get(items)
        if block is None:
            fields = self._attribute_fields(b"\x4a", attributes)
            block = (b"".join(fields),)
            if len(fields) == len(items) and len(block[0]) <= _BLOCK_MAX_BYTES:  # none skipped; memory bounded
                if len(self._blocks) >= _CACHE_MAX:
                    self._blocks.clear()
                self._blocks[items] = block
        return block

    @staticmethod
    def _cached(cache: dict, limit: int, obj, build) -> bytes:
        """build(obj), kept by id; the object is kept too, so its id stays its own."""
        hit = cache.get(id(obj))
        if hit is None or hit[0] is not obj:
            hit = (obj, build(obj))
            if len(cache) >= limit:
                cache.clear()
            cache[id(obj)] = hit
        return hit[1]

    def _resource(self, resource) -> bytes:
        return self._cached(self._resource_cache, 16, resource, self._encode_resource)

    def _encode_resource(self, resource) -> bytes:
        return _field(b"\x0a", b"".join(self._attributes(b"\x0a", resource.attributes)))

    def _scope(self, scope) -> bytes:
        return self._cached(self._scope_cache, 256, scope, self._encode_scope)

    def _encode_scope(self, scope) -> bytes:
        if scope is None:
            return _field(b"\x0a", b"")
        data = _field(b"\x0a", scope.name.encode("utf-8")) if scope.name else b""
        if scope.version:
            data += _field(b"\x12", scope.version.encode("utf-8"))
        data += b"".join(self._attributes(b"\x1a", scope.attributes))
        return _field(b"\x0a", data)

    def span(self, span) -> bytes:
        if type(span) is (_OWN_SPAN[0] if _OWN_SPAN else _own_span_type()):
            try:
                return self._own_span(span)
            except (KeyError, AttributeError, TypeError):  # a field missing: read as any span
                pass
        return self._any_span(span)

    def _own_span(self, span) -> bytes:
        """trace-run's own span (agent/fastspan.py): its fields read where they are, not through
        ReadableSpan's properties (which copy events and links and wrap the attributes), and its
        SpanContexts as the tuples they are (see _context_layout); the same bytes as `_any_span`
        (tests/test_otlp_encoder.py). In C where it can (None: not its case), else in Python."""
        native = self._native
        if native is not None:
            data = _native_or_none(native, span)
            if data is not None:
                return data
        return self._own_span_python(span)

    def _own_span_python(self, span) -> bytes:
        trace_id, span_id, _, _, state, _ = span._context
        parent = span._parent
        parts = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big")]
        if state is not _EMPTY_TRACE_STATE and state:  # (a TraceState's len runs Python code)
            parts.append(_field(b"\x1a", ",".join([k + "=" + v for k, v in state.items()]).encode("utf-8")))
        remote = False
        if parent is not None:
            _, parent_id, remote, _, _, _ = parent
            if parent:  # never false for a SpanContext; as _any_span reads it
                parts.append(b"\x22\x08")
                parts.append(parent_id.to_bytes(8, "big"))
        # name and kind: a few of each per program, encoded once
        name, kind = span._name, span._kind
        named = self._names.get(name)
        if named is None or named[0] is not kind:
            named = self._name_field(name, kind)
        parts.append(named[1])
        start, end = span._start_time, span._end_time
        parts.append(_pack_times(0x39, start, 0x41, end) if start and end else _times(start, end))
        attributes = span._attributes
        if type(attributes) is _OwnAttributes or type(attributes) is _BoundedAttributes:
            if attributes._dict:
                parts += self._span_attributes(attributes._dict)
            if attributes.dropped:
                parts.append(b"\x50" + _varint(attributes.dropped))
        elif attributes:  # anything else, as ReadableSpan's attributes and dropped_attributes read it
            parts += self._attributes(b"\x4a", attributes)
            if isinstance(attributes, _BoundedAttributes) and attributes.dropped:
                parts.append(b"\x50" + _varint(attributes.dropped))
        events = span._events
        if type(events) is not tuple:  # () until the first event, then the SDK's BoundedList
            for event in events:
                parts.append(_field(b"\x5a", self._event(event)))
            if events.dropped:
                parts.append(b"\x60" + _varint(events.dropped))
        links = span._links
        if type(links) is not tuple:
            for link in links:
                parts.append(_field(b"\x6a", self._link(link)))
            if links.dropped:
                parts.append(b"\x70" + _varint(links.dropped))
        status = span._status
        parts.append(_EMPTY_STATUS if status is _OWN_SPAN[1] else _status(status))
        parts.append(_FLAGS[1 if remote else 0])
        return b"".join(parts)

    def _name_field(self, name, kind) -> tuple:
        """(kind, the span's name and kind fields), kept for names short enough to be a span's kind of name."""
        data = (_field(b"\x2a", name.encode("utf-8")) if name else b"") + _KIND[id(kind)]
        named = (kind, data)
        if type(name) is str and len(name) <= _CACHEABLE_LEN:
            if len(self._names) >= _CACHE_MAX and name not in self._names:
                self._names.clear()
            self._names[name] = named
        return named

    def _any_span(self, span) -> bytes:
        """Any ReadableSpan, read through its public properties."""
        ctx = span.context
        parent = span.parent
        parts = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big")]
        state = ctx.trace_state
        if state:
            parts.append(_field(b"\x1a", ",".join([k + "=" + v for k, v in state.items()]).encode("utf-8")))
        if parent:
            parts.append(b"\x22\x08")
            parts.append(parent.span_id.to_bytes(8, "big"))
        if span.name:
            parts.append(_field(b"\x2a", span.name.encode("utf-8")))
        parts.append(_KIND[id(span.kind)])
        parts.append(_times(span.start_time, span.end_time))
        # ReadableSpan.attributes wraps its BoundedAttributes in a MappingProxyType; read under both
        parts += self._attributes(b"\x4a", getattr(span, "_attributes", None) or span.attributes)
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:
            parts.append(_field(b"\x5a", self._event(event)))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:
            parts.append(_field(b"\x6a", self._link(link)))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        parts.append(_status(span.status))
        parts.append(_FLAGS[1 if parent is not None and parent.is_remote else 0])
        return b"".join(parts)

    def preencode(self, span) -> Encoded:
        """The span's bytes now; `encode` frames them with the others of its batch later. In C where it
        can (None: not its case; also until the first span has configured it), else in Python."""
        native = self._native_preencode
        if native is not None:
            encoded = _native_or_none(native, span)
            if encoded is not None:
                return encoded
        encoded = None
        if type(span) is (_OWN_SPAN[0] if _OWN_SPAN else _own_span_type()):
            try:  # (the native call, where there is one, declined it already)
                encoded = _tuple_new(Encoded, (self._own_span_python(span), span._resource,
                                               span._instrumentation_scope))
            except (KeyError, AttributeError, TypeError):  # a field missing: read as any span
                pass
        if encoded is None:
            encoded = Encoded(self.span(span), span.resource, span.instrumentation_scope)
        untrack(encoded)  # as the C path's: the queue holds nothing the garbage collector walks or counts
        return encoded

    def _event(self, event) -> bytes:
        out = b"\x09" + _pack_u64(event.timestamp) if event.timestamp else b""
        if event.name:
            out += _field(b"\x12", event.name.encode("utf-8"))
        out += b"".join(self._attributes(b"\x1a", event.attributes))
        if event.dropped_attributes:
            out += b"\x20" + _varint(event.dropped_attributes)
        return out

    def _link(self, link) -> bytes:
        ctx = link.context
        out = b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big") + b"\x12\x08" + ctx.span_id.to_bytes(8, "big")
        out += b"".join(self._attributes(b"\x22", link.attributes))
        if link.dropped_attributes:
            out += b"\x28" + _varint(link.dropped_attributes)
        return out + (b"\x35\x00\x03\x00\x00" if ctx.is_remote else b"\x35\x00\x01\x00\x00")

    def encode(self, spans: Sequence) -> bytes:
        """An ExportTraceServiceRequest: spans grouped by resource, then by scope,
        each group in order of first appearance (as the official encoder does).

        This runs on the export thread holding the GIL, so it does little per span: its group is
        looked up only when it is not the span before's, and its field (header and bytes) is appended
        to its group's one bytearray; the request is joined once, at the end. (Joining each level of
        nesting apart took ~0.8 ms of GIL per 512-span batch here, ~0.15 ms with one join.) The loop
        over the items is in C where the extension is built (`frame`), in `_frame_python` otherwise."""
        groups: dict = {}  # id(resource) -> (resource, {scope key: (scope, bytearray of its spans' fields)})
        entries: dict = {}  # (id(resource), id(scope)) -> its (scope, bytearray)
        pause = self._pause and len(spans) > SLICE
        frame = self._frame
        if frame is None:
            self._frame_python(spans, groups, entries, pause)
        else:
            # Each slice in C (agent/_otlp_native.c: frame), up to an item it was not written for (not an Encoded, a
            # new group): that one in Python, then the rest of the slice in C again.
            n = len(spans)
            i = 0
            while i < n:
                if pause and i and not i % SLICE:
                    hand_over()
                stop = min(n, i - i % SLICE + SLICE)
                i = frame(spans, i, stop, entries)
                if i < stop:
                    self._frame_python((spans[i],), groups, entries, False)
                    i += 1
        if pause:
            hand_over()  # the last slice, then the request's framing and joining
        out = []
        for resource, scopes in groups.values():
            if resource is None:
                continue  # merged into an equal resource seen before
            body = [self._resource(resource)]
            size = len(body[0])
            for scope, pieces in scopes.values():
                head = self._scope(scope)
                tail = _field(b"\x1a", scope.schema_url.encode("utf-8")) if scope is not None and scope.schema_url \
                    else b""
                n = len(head) + len(pieces) + len(tail)
                lead = b"\x12" + _varint(n)
                body += (lead, head, pieces, tail)
                size += len(lead) + n
            if resource.schema_url:
                body.append(_field(b"\x1a", resource.schema_url.encode("utf-8")))
                size += len(body[-1])
            out.append(b"\x0a" + _varint(size))
            out += body
        return b"".join(out)

    def _frame_python(self, spans: Sequence, groups: dict, entries: dict, pause: bool) -> None:
        """Encoder.encode's loop in Python: each span's field (header and bytes) appended to its group's bytearray.
        (Where the extension is built, `frame` does the common case in C and gives this the rest, one item at
        a time: the same bytes.)"""
        heads = self._heads
        last = pieces = None  # the (resource, scope) of the span before, and its group's bytearray
        for i, span in enumerate(spans):
            if pause and i and not i % SLICE:
                hand_over()
            if type(span) is Encoded:
                data, resource, scope = span
            else:
                data, resource, scope = None, span.resource, span.instrumentation_scope
            if last is None or last[0] is not resource or last[1] is not scope:
                last = (resource, scope)
                # by the objects' ids first: hashing an InstrumentationScope runs Python code (every span is
                # alive until encode returns, so no id is reused meanwhile)
                entry = entries.get((id(resource), id(scope)))
                if entry is None:
                    group = groups.get(id(resource))
                    if group is None:
                        group = _equal_group(groups, resource)
                    scopes = group[1]
                    key = scope or None
                    entry = scopes.get(key)
                    if entry is None:
                        entry = scopes[key] = (key, bytearray())
                    entries[(id(resource), id(scope))] = entry
                pieces = entry[1]
            if data is None:
                data = self.span(span)
            n = len(data)
            head = heads.get(n)
            if head is None:
                if len(heads) >= _CACHE_MAX:
                    heads.clear()
                head = heads[n] = b"\x12" + _varint(n)
            pieces += head
            pieces += data


def _equal_group(groups: dict, resource) -> tuple:
    """Spans of equal but distinct Resource objects share one group, as they do
    in the official encoder (which groups by equality)."""
    for res, scopes in groups.values():
        if res is not None and res == resource:
            groups[id(resource)] = (None, scopes)  # alias: not emitted a second time
            return res, scopes
    group = groups[id(resource)] = (resource, {})
    return group


_OWN_SPAN: list = []  # [fastspan.Span or None, the Status fastspan gives every span until one is set]


def _own_span_type() -> Optional[type]:
    """fastspan.Span, once something imported it (before that no such span exists); None until then,
    and for good where SpanContext is not the tuple `_own_span` reads."""
    if _OWN_SPAN:
        return _OWN_SPAN[0]
    module = sys.modules.get("trace_run.agent.fastspan")
    if module is None:
        return None
    global _BoundedAttributes, _OwnAttributes
    from opentelemetry.attributes import BoundedAttributes as _BoundedAttributes

    _OwnAttributes = module.Attributes

    _OWN_SPAN[:] = [module.Span if _context_layout() else None, module._UNSET]
    global _EMPTY_TRACE_STATE
    from opentelemetry.trace.span import DEFAULT_TRACE_STATE as _EMPTY_TRACE_STATE
    _configure_native(module._UNSET)
    return _OWN_SPAN[0]


def _native_or_none(native: Any, arg: Any) -> Any:
    """native(arg); None (the Python path encodes it) where it raises: a bug of the extension's never loses a span."""
    try:
        return native(arg)
    except Exception as exc:
        log.debug("native span encoder failed (%s: %s)" % (type(exc).__name__, exc))
        return None


def _configure_native(unset_status) -> None:
    """Gives the extension the objects a span's fields are compared with (by identity, as here); until
    then it declines every span."""
    if _NATIVE_SPAN is None:
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from trace_run.agent import _otlp_native

    try:
        _otlp_native.configure(tuple((kind, _KIND[id(kind)][1]) for kind in SpanKind),
                               tuple((code, _CODE[id(code)]) for code in StatusCode),
                               unset_status, Status, _EMPTY_TRACE_STATE, _OwnAttributes, _OWN_SPAN[0], Encoded)
    except Exception as exc:  # left unconfigured: the Python path encodes every span
        log.debug("native span encoder not configured (%s: %s)" % (type(exc).__name__, exc))


_BoundedAttributes = None  # opentelemetry.attributes.BoundedAttributes, with fastspan.Span
_OwnAttributes = None  # fastspan.Attributes (the SDK's class, its fields in slots), with fastspan.Span
_EMPTY_TRACE_STATE = None  # the API's DEFAULT_TRACE_STATE (empty), with fastspan.Span


def _context_layout() -> bool:
    """SpanContext is the tuple `_own_span` reads (runtime_context checks it once)."""
    from trace_run.core import runtime_context

    return runtime_context.CONTEXT_IS_TUPLE


def _times(start, end) -> bytes:
    """Fields 7 and 8 (fixed64 start and end), each left out when 0 or None."""
    if start and end:
        return _pack_times(0x39, start, 0x41, end)
    return (b"\x39" + _pack_u64(start) if start else b"") + (b"\x41" + _pack_u64(end) if end else b"")


def _status(status) -> bytes:
    if status is None:
        return b""
    code = _CODE[id(status.status_code)]
    message = status.description
    if not code and not message:
        return _EMPTY_STATUS
    out = _field(b"\x12", message.encode("utf-8")) if message else b""
    if code:
        out += b"\x18" + _VARINT_1[code]
    return _field(b"\x7a", out)


def _enums() -> tuple:
    """Keyed by id(): hashing an Enum member runs Python code."""
    from opentelemetry.trace import SpanKind, StatusCode

    kinds = {id(kind): b"\x30" + _VARINT_1[kind.value + 1] for kind in SpanKind}
    return kinds, {id(code): code.value for code in StatusCode}


_KIND, _CODE = _enums()


def _sampled_context():
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


# what BatchSpanProcessor.on_end checks before queueing: only sampled spans are encoded
Encoded.context = _sampled_context()


def encode_request(encoder: Encoder, spans: Sequence, max_bytes: int) -> Optional[bytes]:
    """An exporter's request body for `spans`, or None (said in one line) where the batch cannot be
    encoded or is over `max_bytes`: the batch fails, the program goes on (as the stock exporters)."""
    try:
        data = encoder.encode(spans)
    except Exception as error:
        log.warning("spans not encoded (%s: %s); this batch is dropped" % (type(error).__name__, error))
        return None
    if len(data) > max_bytes:
        log.warning("a batch of %d spans is %d bytes, over the %d-byte request limit; it is dropped "
                    "(lower OTEL_BSP_MAX_EXPORT_BATCH_SIZE)" % (len(spans), len(data), max_bytes))
        return None
    return data


def encode_spans(spans: Sequence, encoder: Optional[Encoder] = None) -> bytes:
    """One-shot helper (tests, benchmarks): bytes of an ExportTraceServiceRequest."""
    return (encoder or Encoder(pause=False)).encode(spans)

"""trace-run's span class and the tracer that makes it: the SDK's pipeline, a shorter path to it.

`Span` IS the SDK's span (a subclass of `opentelemetry.sdk.trace.Span`, so a
`ReadableSpan` and an API `Span` to every processor, exporter, sampler and
program), keeping its fields under the SDK's names (in slots, as are its
attributes', `Attributes`); it inherits everything but the few methods where
the time went:

- made without the SDK's constructor: attributes of plain values (str, int,
  float, bool within the limits: what instrumentors pass) go into the
  BoundedAttributes without the per-value cleaning, which for them changes
  nothing; events and links get their bounded lists when the first one comes;
- `end` hands the span itself to the processors (it is read-only from then
  on) instead of a copy; `set_attribute` skips the cleaning for plain values;
- `Tracer.start_as_current_span` is one small context manager instead of
  three generators (ProxyTracer's, the SDK tracer's, `use_span`).

Anything else (other values, limits reached, a span made by hand with the
SDK's constructor) takes the SDK's own code. Where the installed SDK differs
from what this was checked against (its span has fields ours lacks, its
BoundedAttributes stores otherwise), spans are made by the SDK's constructor:
slower, the same. OTEL_TRACE_RUN_SPAN_CLASS=sdk switches all of it off.

Where the optional extension agent/_span_native.c was built, `Tracer.start_span`'s two fast branches (a root
decided by a bound, a child of a sampled span of ours), `Span.set_attribute`'s fast path and `Span.end` run in C,
making the same objects (tests/test_span_native.py); the Python methods below do everything else, and everything
where the extension is missing, declines or fails (see `use_native`; OTEL_TRACE_RUN_NATIVE_SPAN=false).
"""

from __future__ import annotations

import logging
import random as _random
import threading
from time import time_ns
from typing import Any, Callable, Optional

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.trace.status import Status, StatusCode
from trace_run.core import compat, runtime_context

from .samplers import RateLimitingSampler

_logger = logging.getLogger("opentelemetry.sdk.trace")  # the SDK's messages, under the SDK's logger
_logger_own = logging.getLogger(__name__)

_new = object.__new__
_Lock = threading.Lock
_SPAN_KEY = getattr(trace_api, "_SPAN_KEY", None)
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RECORD_AND_SAMPLE = Decision.RECORD_AND_SAMPLE
_RECORD_ONLY = Decision.RECORD_ONLY
_DROP = Decision.DROP
_tuple_new = tuple.__new__
_INVALID_CONTEXT = trace_api.INVALID_SPAN_CONTEXT
_Context = context_api.Context
_dict_set = dict.__setitem__
_PLAIN = (str, int, float, bool)
_PLAIN_TYPES = frozenset(_PLAIN)
_STR = frozenset((str,))
_INTERNAL = SpanKind.INTERNAL

# What differs between the SDK releases trace-run supports (1.33 and later), checked once.
_RANDOM_FLAG = getattr(TraceFlags, "RANDOM_TRACE_ID", None)  # W3C level 2 "random" flag (newer SDKs)
_HAS_ON_ENDING = hasattr(sdk_trace.SpanProcessor, "_on_ending")
_HAS_IS_ENABLED = hasattr(sdk_trace.Tracer, "_is_enabled")
# the SDK's Tracer._is_enabled is `return self._tracer_config.is_enabled`: read where it is
_ENABLED_BY_CONFIG = _HAS_IS_ENABLED and getattr(getattr(sdk_trace.Tracer._is_enabled, "__code__", None),
                                                 "co_names", None) == ("_tracer_config", "is_enabled")
# what a span's end calls when the SDK's own metrics are off (and their class)
_NOOP_METRICS, _NOOP_END = compat.noop_tracer_metrics()
if _RANDOM_FLAG is not None:
    _SAMPLED_RANDOM, _NOT_SAMPLED_RANDOM = TraceFlags(_SAMPLED | _RANDOM_FLAG), TraceFlags(_NOT_SAMPLED | _RANDOM_FLAG)
# a root's flags where its trace id is the SDK's random one (see _root_bound): sampled, dropped
_ROOT_SAMPLED, _ROOT_DROPPED = (_SAMPLED_RANDOM, _NOT_SAMPLED_RANDOM) if _RANDOM_FLAG is not None else (
    _SAMPLED, _NOT_SAMPLED)
# the SDK's RandomIdGenerator as it ships: `start_span` draws its ids itself, as it does (random.getrandbits, 0 redrawn)
_ID_METHODS = ("generate_trace_id", "generate_span_id", "is_trace_id_random")
_SDK_IDS = tuple(getattr(RandomIdGenerator, name, None) for name in _ID_METHODS)


def _sdk_random_ids(generator) -> bool:
    kind = type(generator)
    return (kind is RandomIdGenerator and not getattr(generator, "__dict__", None)
            and tuple(getattr(kind, name, None) for name in _ID_METHODS) == _SDK_IDS)


class Attributes(BoundedAttributes):
    """The SDK's BoundedAttributes (its methods, its rules, an instance of it to every check), its fields in
    slots: a span's start, each attribute set, its end and its encoding read and write them (in C, by offset)."""

    __slots__ = ("_dict", "maxlen", "dropped", "max_value_len", "_lock", "_immutable", "_extended_attributes")


def _attribute_state() -> tuple:
    """What BoundedAttributes' constructor sets besides _dict and _lock, in its order (the SDK 1.33-1.36 one sets
    _extended_attributes too): what _AttributeMaker copies into each new one, where all are Attributes' slots."""
    try:
        made = vars(BoundedAttributes(None, None, immutable=False, max_value_len=None))
    except Exception:
        return ()
    return tuple(name for name in made if name not in ("_dict", "_lock"))


_ATTRIBUTE_STATE = _attribute_state()


class _AttributeMaker:
    """BoundedAttributes for one tracer's limits (`Attributes`), made without cleaning when every key is a non-empty
    str and every value a str/int/float/bool within the limits: for those the cleaning changes nothing, so the
    result is the constructor's (checked once against it; else the constructor is used every time).
    Its fields are slots: the C reads them at each span and each attribute set."""

    __slots__ = ("maxlen", "max_value_len", "fast", "_state", "_dict_type", "_lock_type", "_lock_factory")

    def __init__(self, maxlen: Optional[int], max_value_len: Optional[int]):
        self.maxlen, self.max_value_len = maxlen, max_value_len
        self.fast = False
        try:
            self._prepare()
        except Exception:  # another BoundedAttributes than the one this was written for: its constructor
            self.fast = False

    def _prepare(self) -> None:
        proto = BoundedAttributes(self.maxlen, None, immutable=False, max_value_len=self.max_value_len)
        state = dict(vars(proto))
        if not (set(state) == set(_ATTRIBUTE_STATE) | {"_dict", "_lock"} and isinstance(state["_dict"], dict)
                and set(_ATTRIBUTE_STATE) <= set(Attributes.__slots__)
                and state.get("dropped") == 0 and state.get("_immutable") is False and self.maxlen != 0):
            return
        self._state = tuple(state[name] for name in _ATTRIBUTE_STATE)
        self._dict_type = type(state["_dict"])
        self._lock_type = type(proto._lock)
        self._lock_factory = threading.RLock if self._lock_type is type(threading.RLock()) else threading.Lock
        probe = {"a": "x" * min(3, self.max_value_len or 3), "b": 1, "c": 2.5, "d": True}
        if self.maxlen is not None:
            probe = dict(list(probe.items())[: self.maxlen])
        real = BoundedAttributes(self.maxlen, probe, immutable=False, max_value_len=self.max_value_len)
        self.fast = True
        ours = self.make(probe)
        same = (type(ours._lock) is self._lock_type and list(ours._dict.items()) == list(real._dict.items())
                and {name: getattr(ours, name) for name in _ATTRIBUTE_STATE}
                == {k: v for k, v in vars(real).items() if k not in ("_lock", "_dict")})
        self.fast = same

    def plain(self, attributes) -> bool:
        """Every item is one the cleaning leaves as it is, and there is room for all."""
        maxlen, max_value_len = self.maxlen, self.max_value_len
        if maxlen is not None and len(attributes) > maxlen:
            return False
        # the types checked by set operations (C loops, not Python ones)
        if not _PLAIN_TYPES.issuperset(map(type, attributes.values())) or not _STR.issuperset(map(type, attributes)):
            return False
        if "" in attributes:
            return False
        if max_value_len is not None:
            for value in attributes.values():
                if type(value) is str and len(value) > max_value_len:
                    return False
        return True

    def make(self, attributes) -> BoundedAttributes:
        if self.fast and (not attributes or self.plain(attributes)):
            made = _new(Attributes)
            for name, value in zip(_ATTRIBUTE_STATE, self._state):
                setattr(made, name, value)
            made._dict = self._dict_type(attributes) if attributes else self._dict_type()
            made._lock = self._lock_factory()
            return made
        # the constructor's cleaning and limits, on this class (the C and the encoder read it by offset)
        return Attributes(self.maxlen, attributes, immutable=False, max_value_len=self.max_value_len)


# the fields trace-run's spans are made with (the SDK 1.33-1.45 constructor's), then trace-run's own
_FIELDS = ("_name", "_context", "_kind", "_instrumentation_info", "_instrumentation_scope", "_parent",
           "_start_time", "_end_time", "_attributes", "_events", "_links", "_resource", "_status", "_sampler",
           "_trace_config", "_record_exception", "_set_status_on_exception", "_span_processor", "_limits",
           "_lock", "_record_end_metrics")
_SLOTS = _FIELDS + ("_maker",)


class Span(sdk_trace.Span):
    """The SDK's span with a shorter path for what instrumentors do with it (see the module's doc).

    Its fields are slots under the SDK's names: every step of a span reads and writes them (in C, by offset),
    where a dict cost a hashed lookup each (~120 a span). The SDK's code reads and sets them by attribute as
    before; a field a newer SDK adds goes in the instance's `__dict__` (its base classes keep one)."""

    __slots__ = _SLOTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._maker = None  # made by the SDK's constructor (by hand, or the fallback): the SDK's paths
        super().__init__(*args, **kwargs)

    def set_attribute(self, key: str, value: Any) -> None:
        maker = self._maker
        kind = type(value)
        if maker is not None and maker.fast and type(key) is str and key and kind in _PLAIN and (
                kind is not str or maker.max_value_len is None or len(value) <= maker.max_value_len):
            with self._lock:
                if self._end_time is not None:
                    _logger.warning("Setting attribute on ended span.")
                    return
                stored = self._attributes._dict
                if key in stored:
                    del stored[key]  # a key set again moves to the end, as in BoundedAttributes
                    stored[key] = value
                    return
                if maker.maxlen is None or len(stored) < maker.maxlen:
                    stored[key] = value
                    return
        super().set_attribute(key, value)  # full, or any other value: the SDK's way (and its messages)

    def set_attributes(self, attributes) -> None:
        maker = self._maker
        if maker is not None and maker.fast and attributes and maker.plain(attributes):
            with self._lock:
                if self._end_time is not None:
                    _logger.warning("Setting attribute on ended span.")
                    return
                stored = self._attributes._dict
                if maker.maxlen is None or len(stored) + len(attributes) <= maker.maxlen:
                    for key, value in attributes.items():
                        if key in stored:
                            del stored[key]
                        stored[key] = value
                    return
        super().set_attributes(attributes)

    def get_span_context(self) -> trace_api.SpanContext:
        return self._context  # the SDK's returns typing.cast(SpanContext, self._context): a call more

    def update_name(self, name: str) -> None:
        # the SDK's, without its decorator's (*args, **kwargs) call: frameworks rename each server span
        with self._lock:
            if self._end_time is None:
                self._name = name
                return
        _logger.warning("Tried calling %s on an ended span.", "update_name")

    # events and links get their bounded lists with the first one (most spans have neither)
    def _add_event(self, event) -> None:
        with self._lock:
            if self._end_time is None:
                if type(self._events) is tuple:
                    self._events = self._new_events()
                self._events.append(event)
                return
        _logger.warning("Tried calling %s on an ended span.", "_add_event")

    def _add_link(self, link) -> None:
        with self._lock:
            if self._end_time is None:
                if type(self._links) is tuple:
                    self._links = sdk_trace.Span._new_links(self, ())
                self._links.append(link)
                return
        _logger.warning("Tried calling %s on an ended span.", "_add_link")

    def end(self, end_time: Optional[int] = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                _logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            self._attributes._immutable = True
        record_end_metrics = getattr(self, "_record_end_metrics", None)
        if record_end_metrics and record_end_metrics is not _NOOP_END:
            record_end_metrics()
        processor = self._span_processor
        try:  # _route(processor), its cache read here
            state = processor.__dict__
            route = state[_ROUTE]
            if route[0] is not state["_span_processors"]:
                route = _route(processor)
        except (AttributeError, KeyError, TypeError):
            route = _route(processor)
        if route[2]:
            processor._on_ending(self)
        route[3](self)  # itself, not a copy: nothing about it can change any more


runtime_context.read_context_field(Span)  # its get_span_context above: unsampled_in reads the field


def _ignores_attributes(sampler, nested: bool = False) -> bool:
    """Whether `sampler` decides without reading a span's attributes or name (exact types: a subclass may read them)."""
    kind = type(sampler)
    if kind in (sampling.StaticSampler, sampling.TraceIdRatioBased, RateLimitingSampler):
        return True
    if kind in (sampling.ParentBased, sampling.ParentBasedTraceIdRatio) and not nested:
        delegates = compat.parent_based_delegates(sampler)
        return delegates is not None and all(_ignores_attributes(d, True) for d in delegates)
    return False


_ROUTE = "_trace_run_route"


def does_nothing(function) -> bool:
    """A function whose body is `pass` (or a constant, its docstring aside): a call to it can be left out."""
    def bare(*args, **kwargs):
        pass

    def documented(*args, **kwargs):
        """Doc."""

    code = getattr(function, "__code__", None)
    return code is not None and code.co_code in (bare.__code__.co_code, documented.__code__.co_code)


def _routed(processor) -> tuple:
    """(its processors, call on_start?, call _on_ending?, the on_end to call) for a span processor.
    The SDK's SynchronousMultiSpanProcessor calls each of its processors in turn; where none of them does
    anything on start (or on ending) the call is left out, and a lone processor gets on_end directly."""
    processors = getattr(processor, "_span_processors", None)
    if type(processor) is not sdk_trace.SynchronousMultiSpanProcessor or type(processors) is not tuple:
        return processors, True, _HAS_ON_ENDING, processor.on_end

    def idle(p, name: str) -> bool:  # a processor may say it does nothing on start (it forwards to one that doesn't)
        if name in getattr(p, "__dict__", {}):
            return False
        return does_nothing(getattr(type(p), name, None)) or (
            name == "on_start" and getattr(p, "inert_on_start", False) is True)

    on_start = not all(idle(p, "on_start") for p in processors)
    on_ending = _HAS_ON_ENDING and not all(idle(p, "_on_ending") for p in processors)
    on_end = processors[0].on_end if len(processors) == 1 else processor.on_end
    return processors, on_start, on_ending, on_end


def _route(processor) -> tuple:
    """`_routed(processor)`, kept on the processor until its processors change (the SDK then replaces
    their tuple)."""
    try:
        state = processor.__dict__
        route = state[_ROUTE]
        if route[0] is state["_span_processors"]:
            return route
    except (AttributeError, KeyError, TypeError):
        pass
    route = _routed(processor)
    try:
        processor.__dict__[_ROUTE] = route
    except (AttributeError, TypeError):
        pass
    return route


def _sampling_plan(sampler) -> Optional[tuple]:
    """What `sampler` decides, as data, for the SDK's built-in samplers (exact types): per parent kind
    (root, remote sampled, remote not sampled, local sampled, local not sampled) a Decision, or an int
    bound for a trace-id ratio. `Tracer.start_span` then decides without the sampler's two calls and its
    SamplingResult; the answer is the sampler's (tests/test_fastspan.py). None: call the sampler."""
    kind = type(sampler)
    if kind in (sampling.ParentBased, sampling.ParentBasedTraceIdRatio):
        delegates = compat.parent_based_delegates(sampler)
        if delegates is None:
            return None
        rules = tuple(_sampling_plan(d) for d in delegates)
        return None if any(r is None for r in rules) else tuple(r[0] for r in rules)
    if kind is sampling.StaticSampler:
        rule = getattr(sampler, "_decision", None)
        return (rule,) * 5 if isinstance(rule, Decision) else None
    if kind is sampling.TraceIdRatioBased:
        bound = getattr(sampler, "bound", None)
        return (bound,) * 5 if type(bound) is int and getattr(sampler, "TRACE_ID_LIMIT", None) == _ID_LIMIT else None
    return None


_ID_LIMIT = (1 << 64) - 1


def _root_bound(tracer: Tracer) -> Optional[int]:
    """The bound under which a root span's `trace_id & _ID_LIMIT` is sampled, where `start_span` may decide a
    root in two steps (a trace id, a compare): its plan decides roots by a ratio or always/never, its ids are
    the SDK's random ones, its spans' contexts plain tuples, the SDK's metrics off, and whether it is enabled
    is its configuration's flag. Else None: the whole path (and for children too, see _child_sampled)."""
    if not (tracer._plan is not None and tracer._random_ids and tracer._plain_ids
            and (tracer._metrics_off or tracer._metrics is None) and (_ENABLED_BY_CONFIG or not _HAS_IS_ENABLED)):
        return None
    rule = tracer._plan[0]
    if type(rule) is int:
        return rule
    return {_DROP: 0, _RECORD_AND_SAMPLE: 1 << 64}.get(rule)


def _context_is_a_plain_tuple() -> bool:
    """SpanContext is the tuple (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid) (checked
    once): `start_span` then makes it as SpanContext.__new__ does, without the call and the id range checks
    that ids of the SDK's RandomIdGenerator always pass."""
    try:
        made = SpanContext(3, 5, False, _SAMPLED, None)
        ours = _tuple_new(SpanContext, (3, 5, False, _SAMPLED, DEFAULT_TRACE_STATE, True))
        return tuple(made) == tuple(ours) and made.is_valid is ours.is_valid and made.trace_state is ours.trace_state
    except Exception:
        return False


_PLAIN_CONTEXT = _context_is_a_plain_tuple()


def _sdk_span_fields(resource) -> frozenset:
    """The fields the installed SDK's constructor gives a span."""
    span = sdk_trace._Span("probe", SpanContext(1, 1, is_remote=False), resource=resource)
    return frozenset(vars(span))


class Tracer(sdk_trace.Tracer):
    """The SDK's tracer making `Span`s. The agent's provider turns the SDK tracers it makes into these
    (`adopt`): the SDK builds them, keeps them and updates them (resource after a fork, configuration)."""

    _fields_ok: Optional[bool] = None  # our spans have every field the SDK's constructor gives (once)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trace_run_setup()

    def _trace_run_setup(self) -> None:
        limits = self._span_limits
        self._maker = _AttributeMaker(limits.max_span_attributes, limits.max_span_attribute_length)
        self._metrics = getattr(self, "_tracer_metrics", None)
        # the SDK's metrics off: every span gets the same function to call at its end, which does nothing
        self._metrics_off = _NOOP_END is not None and type(self._metrics) is _NOOP_METRICS
        self._attribute_blind = _ignores_attributes(self.sampler)
        self._plan = _sampling_plan(self.sampler)
        self._plain_ids = _PLAIN_CONTEXT and type(self.id_generator) is RandomIdGenerator
        self._random_ids = _sdk_random_ids(self.id_generator)
        self._root_bound = _root_bound(self)
        # a local parent that is sampled: its child sampled too (ParentBased's default), decided in one step
        self._child_sampled = self._root_bound is not None and self._plan[3] is _RECORD_AND_SAMPLE
        # a span's fields in its slots' order: those the same for every span of this tracer (None: its own, set
        # by start_span); the C start_span copies these
        template = dict.fromkeys(_SLOTS)
        template.update({
            "_instrumentation_info": self.instrumentation_info, "_instrumentation_scope": self._instrumentation_scope,
            "_events": (), "_links": (), "_status": _UNSET, "_maker": self._maker})
        self._span_fields = tuple(template.values())
        if Tracer._fields_ok is None:
            expected = set(_FIELDS) | ({"_record_end_metrics"} if self._metrics is not None else set())
            Tracer._fields_ok = _sdk_span_fields(self.resource) <= expected

    def start_as_current_span(self, name: str, context=None, kind: SpanKind = _INTERNAL, attributes=None,
                              links=(), start_time: Optional[int] = None, record_exception: bool = True,
                              set_status_on_exception: bool = True, end_on_exit: bool = True):
        return CurrentSpan(self, (name, context, kind, attributes, links, start_time, record_exception,
                                  set_status_on_exception), end_on_exit)


    def start_span_deferred(self, context, kind: SpanKind, make: Callable[[], tuple]) -> trace_api.Span:
        """`start_span(*make(), context=context, kind=kind)`, `make()` giving (name, attributes); where the
        sampler reads neither (the SDK's built-in samplers, trace-run's rate limiter) `make` is called only
        for a span that records: an unsampled request does not pay for them. Any other sampler gets them
        first, as always."""
        if not self._attribute_blind:
            name, attributes = make()
            return self.start_span(name, context, kind, attributes)
        return self.start_span("", context, kind, None, (), None, True, True, make)

    def start_span(self, name: str, context=None, kind: SpanKind = _INTERNAL, attributes=None, links=(),
                   start_time: Optional[int] = None, record_exception: bool = True,
                   set_status_on_exception: bool = True, _make=None) -> trace_api.Span:
        """The SDK's Tracer.start_span, step for step (tests/test_fastspan.py compares the two).
        `_make`: see start_span_deferred."""
        links = links or ()
        # trace.get_current_span(context).get_span_context(), the API Span check remembered per class
        current = (context if context is not None else runtime_context.get_current()).get(_SPAN_KEY)
        if current is None and self._root_bound is not None and (
                not _HAS_IS_ENABLED or self._tracer_config.is_enabled):
            # a root, where the plan decides roots by a bound (see _root_bound): what the steps below decide,
            # the ids drawn in the same order
            trace_id = _random.getrandbits(128) or self.id_generator.generate_trace_id()
            span_id = _random.getrandbits(64) or self.id_generator.generate_span_id()
            if trace_id & _ID_LIMIT >= self._root_bound:
                # (its context passed by position: a keyword makes type.__call__ build a dict for __init__)
                return NonRecordingSpan(_tuple_new(SpanContext, (
                    trace_id, span_id, False, _ROOT_DROPPED, DEFAULT_TRACE_STATE, True)))
            parent, decision, sampled_attributes = None, _RECORD_AND_SAMPLE, attributes
            span_context = _tuple_new(SpanContext, (trace_id, span_id, False, _ROOT_SAMPLED, DEFAULT_TRACE_STATE, True))
        elif type(current) is Span and self._child_sampled and type(current._context) is SpanContext and (
                current._context[3] & 0x01) and (not _HAS_IS_ENABLED or self._tracer_config.is_enabled):
            # a child of one of our sampled spans, where the plan samples those (see _child_sampled): likewise
            parent = current._context
            trace_id, _, _, parent_flags, parent_state, _ = parent
            span_id = _random.getrandbits(64) or self.id_generator.generate_span_id()
            decision, sampled_attributes = _RECORD_AND_SAMPLE, attributes
            span_context = _tuple_new(SpanContext, (
                trace_id, span_id, False,
                _SAMPLED_RANDOM if _RANDOM_FLAG is not None and parent_flags & _RANDOM_FLAG else _SAMPLED,
                DEFAULT_TRACE_STATE if parent_state is None else parent_state, True))
        else:
            if current is None:
                parent = _INVALID_CONTEXT  # INVALID_SPAN's
            else:
                if type(current) not in runtime_context.SPAN_TYPES:  # read here: runtime_context may be mid-import now
                    current = runtime_context.checked_span(current)
                parent = current.get_span_context()
                if parent is not None and not isinstance(parent, SpanContext):
                    raise TypeError("parent_span_context must be a SpanContext or None.")
            if _HAS_IS_ENABLED and not (self._tracer_config.is_enabled if _ENABLED_BY_CONFIG else self._is_enabled()):
                return NonRecordingSpan(parent)
            if parent is None:
                valid = False
            elif _PLAIN_CONTEXT and type(parent) is SpanContext:  # its fields as the tuple holds them, not by property
                trace_id, _, parent_remote, parent_flags, parent_state, valid = parent
            else:
                valid = parent.is_valid
                if valid:
                    trace_id, parent_remote, parent_flags, parent_state = (
                        parent.trace_id, parent.is_remote, parent.trace_flags, parent.trace_state)
            if not valid:
                parent = None
                trace_id = ((_random.getrandbits(128) if self._random_ids else 0)
                            or self.id_generator.generate_trace_id())
            plan = self._plan
            if plan is not None:  # the sampler's decision, as it would make it (see _sampling_plan)
                if parent is None:
                    rule = plan[0]
                    trace_state = None
                else:
                    sampled = parent_flags & 0x01  # TraceFlags.sampled
                    rule = (plan[1] if sampled else plan[2]) if parent_remote else (plan[3] if sampled else plan[4])
                    trace_state = parent_state
                if type(rule) is int:
                    decision = _RECORD_AND_SAMPLE if trace_id & _ID_LIMIT < rule else _DROP
                else:
                    decision = rule
                sampled_attributes = attributes
            else:
                result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
                decision, trace_state, sampled_attributes = result.decision, result.trace_state, result.attributes
            sampled = decision is _RECORD_AND_SAMPLE
            if _RANDOM_FLAG is not None and (
                    (self._random_ids or self.id_generator.is_trace_id_random()) if parent is None
                    else parent_flags & _RANDOM_FLAG):
                flags = _SAMPLED_RANDOM if sampled else _NOT_SAMPLED_RANDOM
            else:
                flags = _SAMPLED if sampled else _NOT_SAMPLED
            if self._plain_ids:
                span_id = (_random.getrandbits(64) if self._random_ids else 0) or self.id_generator.generate_span_id()
                span_context = _tuple_new(SpanContext, (trace_id, span_id, False, flags,
                                                        DEFAULT_TRACE_STATE if trace_state is None else trace_state,
                                                        True))
            else:
                span_context = SpanContext(trace_id, self.id_generator.generate_span_id(), is_remote=False,
                                           trace_flags=flags, trace_state=trace_state)
        metrics = self._metrics
        if self._metrics_off:
            record_end_metrics = _NOOP_END
        else:
            record_end_metrics = metrics.start_span(parent, decision) if metrics is not None else None
        if decision is not _RECORD_AND_SAMPLE and decision is not _RECORD_ONLY:
            return NonRecordingSpan(span_context)
        # an attribute-blind sampler hands back what it was given (nothing, here): the deferred ones go in its place
        if _make is None:
            span_attributes = sampled_attributes
        else:
            name, span_attributes = _make()
        if not Tracer._fields_ok:
            return self._sdk_constructed(name, span_context, parent, span_attributes, kind, links, record_exception,
                                         set_status_on_exception, start_time, context, record_end_metrics)
        span = _new(Span)
        span._name, span._context, span._kind = name, span_context, kind
        span._instrumentation_info, span._instrumentation_scope = self.instrumentation_info, self._instrumentation_scope
        span._parent, span._start_time = parent, start_time if start_time is not None else time_ns()
        span._end_time, span._attributes = None, self._maker.make(span_attributes)
        span._events, span._links, span._resource, span._status = (), (), self.resource, _UNSET
        span._sampler, span._trace_config, span._record_exception = self.sampler, None, record_exception
        span._set_status_on_exception, span._span_processor = set_status_on_exception, self.span_processor
        span._limits, span._lock, span._record_end_metrics = self._span_limits, _Lock(), record_end_metrics
        span._maker = self._maker
        if links:
            span._links = sdk_trace.Span._new_links(span, links)  # the SDK's checks and limits
        processor = self.span_processor
        if _route(processor)[1]:
            processor.on_start(span, parent_context=context)
        return span

    def _sdk_constructed(self, name, span_context, parent, attributes, kind, links, record_exception,
                         set_status_on_exception, start_time, context, record_end_metrics) -> Span:
        kwargs = dict(name=name, context=span_context, parent=parent, sampler=self.sampler,
                      resource=self.resource, attributes=attributes, span_processor=self.span_processor,
                      kind=kind, links=links, instrumentation_info=self.instrumentation_info,
                      record_exception=record_exception, set_status_on_exception=set_status_on_exception,
                      limits=self._span_limits, instrumentation_scope=self._instrumentation_scope)
        if self._metrics is not None:
            kwargs["record_end_metrics"] = record_end_metrics
        span = Span(**kwargs)
        span.start(start_time=start_time, parent_context=context)
        return span


# -- Tracer.start_span's two fast branches, Span.set_attribute's fast path and Span.end in C -----------------
# (agent/_span_native.c, an optional extension: where it was not built, these Python methods are all there is).
# The C methods make the objects these make and call these (same arguments) for everything else; an error of
# theirs is logged (debug) and these run instead. OTEL_TRACE_RUN_NATIVE_SPAN=false keeps them out.
_python_start_span = Tracer.start_span
_python_set_attribute = Span.set_attribute
_python_end = Span.end
_python_is_recording = Span.is_recording  # (the SDK's)
_python_update_name = Span.update_name

try:
    from trace_run.agent import _span_native as _NATIVE
except ImportError:  # not built (no compiler): the Python methods
    _NATIVE = None

# what the C methods read in the tracer's instance dict: the class must not define them (descriptors would win
# there). A span's fields they read in its slots (`_SLOTS`, each checked to be one of Span's when configured).
_NATIVE_TRACER_FIELDS = ("_root_bound", "_child_sampled", "_tracer_config", "_span_fields", "_maker", "resource",
                         "sampler", "span_processor", "_span_limits", "_metrics_off", "_metrics", "id_generator")


def _unpack2(made):
    name, attributes = made  # start_span's `name, span_attributes = _make()`, its errors
    return name, attributes


def _sets_context(self, context):
    self._context = context


def _non_recording_init():
    """NonRecordingSpan's __init__ where calling the class is `object.__new__` then its __init__, and that __init__
    is `self._context = context` (its code, compared with _sets_context's): the C then makes the span without the
    call, re-checking each time that these are still the class's. Else None: the C calls the class."""
    init, mine = NonRecordingSpan.__dict__.get("__init__"), _sets_context.__code__
    code = getattr(init, "__code__", None)
    if not (type(NonRecordingSpan).__call__ is type.__call__ and NonRecordingSpan.__new__ is object.__new__
            and type(init) is type(_sets_context) and NonRecordingSpan.__init__ is init and type(code) is type(mine)):
        return None
    fields = ("co_code", "co_consts", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_argcount",
              "co_posonlyargcount", "co_kwonlyargcount")
    kinds = 0x4 | 0x8 | 0x20 | 0x80 | 0x100 | 0x200  # the flags that change a call: *args, **kwargs, generator, async
    same = all(getattr(code, f) == getattr(mine, f) for f in fields) and code.co_flags & kinds == mine.co_flags & kinds
    return init if same else None


def _native_failed(exc: BaseException) -> None:
    _logger_own.debug("native span path failed, Python's used (%s: %s)" % (type(exc).__name__, exc))


def use_native(on: bool) -> bool:
    """`Tracer.start_span`, `Span.set_attribute`, `Span.end`, `Span.is_recording` and `Span.update_name` in C
    (`on`, where the extension was built and these spans are what it was written for) or the Python methods
    above. Whether the C ones are in use."""
    Tracer.start_span, Span.set_attribute, Span.end = _python_start_span, _python_set_attribute, _python_end
    Span.is_recording, Span.update_name = _python_is_recording, _python_update_name
    if not (on and _NATIVE is not None and _PLAIN_CONTEXT and _SPAN_KEY is not None
            and not any(hasattr(Tracer, name) for name in _NATIVE_TRACER_FIELDS)
            and TraceFlags.__and__ is int.__and__ and not hasattr(BoundedAttributes, "_immutable")
            and BoundedAttributes.__setattr__ is object.__setattr__):
        return False
    try:
        start, set_attribute, end, recording, rename = _NATIVE.configure({
            "tracer": Tracer, "span": Span, "span_slots": _SLOTS, "maker": _AttributeMaker,
            "bounded": Attributes, "attribute_state": _ATTRIBUTE_STATE,
            "span_context": SpanContext, "non_recording": NonRecordingSpan, "context": _Context,
            "default_state": DEFAULT_TRACE_STATE, "root_sampled": _ROOT_SAMPLED, "root_dropped": _ROOT_DROPPED,
            "sampled": _SAMPLED, "sampled_random": _SAMPLED_RANDOM if _RANDOM_FLAG is not None else _SAMPLED,
            "random_flag": None if _RANDOM_FLAG is None else int(_RANDOM_FLAG), "span_key": _SPAN_KEY,
            "internal": _INTERNAL, "lock_factory": _Lock, "lock_type": type(_Lock()),
            "rlock_function": threading.RLock, "threading_dict": vars(threading), "random_dict": vars(_random),
            "runtime_dict": vars(runtime_context), "route": _route, "noop_end": _NOOP_END,
            "has_is_enabled": _HAS_IS_ENABLED, "python_start": _python_start_span,
            "python_set": _python_set_attribute, "report": _native_failed, "unpack2": _unpack2,
            "time_ns": time_ns, "python_end": _python_end, "python_is_recording": _python_is_recording,
            "python_update_name": _python_update_name, "non_recording_init": _non_recording_init()})
    except Exception as exc:
        _native_failed(exc)
        return False
    Tracer.start_span, Span.set_attribute, Span.end = start, set_attribute, end
    Span.is_recording, Span.update_name = recording, rename
    return True


def native_switch() -> bool:
    """OTEL_TRACE_RUN_NATIVE_SPAN (true where it cannot be read)."""
    return runtime_context.native_switch("OTEL_TRACE_RUN_NATIVE_SPAN")


NATIVE = use_native(native_switch())


def adopt(tracer: sdk_trace.Tracer) -> sdk_trace.Tracer:
    """The SDK's tracer, now making trace-run's spans (its class swapped once; the provider keeps it)."""
    if type(tracer) is sdk_trace.Tracer:
        tracer.__class__ = Tracer
        tracer._trace_run_setup()
    return tracer


class CurrentSpan:
    """`start_as_current_span`'s context manager: a new span, current inside the block, ended after
    it, with the API's `use_span` rules for an exception. Also a decorator (a new span per call)."""

    __slots__ = ("_tracer", "_args", "_end_on_exit", "_span", "_token")

    def __init__(self, tracer, args: tuple, end_on_exit: bool = True) -> None:
        self._tracer = tracer
        self._args = args  # start_span's: name, context, kind, attributes, links, start_time, record, set_status
        self._end_on_exit = end_on_exit

    def __enter__(self) -> trace_api.Span:
        span = self._span = self._tracer.start_span(*self._args)
        if runtime_context.DICT_CONTEXT:  # runtime_context.with_span(span), inline
            context = _Context(runtime_context.get_current())
            _dict_set(context, _SPAN_KEY, span)
        else:
            context = runtime_context.with_span(span)
        self._token = runtime_context.attach(context)
        return span

    def __exit__(self, exc_type, exc, tb) -> bool:
        span = self._span
        try:
            runtime_context.detach(self._token)
        finally:
            try:
                if isinstance(exc, Exception) and span.is_recording():  # not BaseException: see use_span
                    a = self._args
                    if a[6]:
                        span.record_exception(exc)
                    if a[7]:
                        span.set_status(Status(status_code=StatusCode.ERROR,
                                               description=f"{type(exc).__name__}: {exc}"))
            finally:
                if self._end_on_exit:
                    span.end()
        return False

    def __call__(self, function):
        return span_each_call(self._tracer, self._args + (self._end_on_exit,), function)


def span_each_call(tracer: trace_api.Tracer, args: tuple, function: Callable) -> Callable:
    """`function` decorated by `tracer.start_as_current_span(*args)`: a new span per call, from the
    context manager the tracer gives at that time (the program's TracerProvider may have taken over)."""
    import functools
    import inspect

    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def run_async(*f_args: Any, **f_kwargs: Any) -> Any:
            with tracer.start_as_current_span(*args):
                return await function(*f_args, **f_kwargs)

        return run_async

    @functools.wraps(function)
    def run(*f_args: Any, **f_kwargs: Any) -> Any:
        with tracer.start_as_current_span(*args):
            return function(*f_args, **f_kwargs)

    return run

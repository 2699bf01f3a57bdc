"""core.wrapping: wrapt's C FunctionWrapper without wrapt's top level, with every guarantee wrapt gave.

Each guarantee is checked side by side: one copy of a throwaway class (or module) wrapped through
TraceRunInstrumentor.wrap, an identical copy wrapped by the whole of wrapt (`wrapt.wrap_function_wrapper`),
and what a caller can observe must be the same: signature, names, doc, `__wrapped__`, `isinstance`,
how methods, class and static methods bind (and what the wrapper is told), pickling, and the exact
originals back after uninstrument(). The loading itself is checked in fresh interpreters.
"""

from __future__ import annotations

import inspect
import json
import math
import pickle
import subprocess
import sys
import textwrap
import types

import pytest
from support import clean_env, run_traced
from trace_run.core import wrapping
from trace_run.instrumentors.base import TraceRunInstrumentor


def make_classes():
    """A fresh Base/Sub pair and a module, so each test wraps objects nobody else holds."""

    class Base:
        def method(self, a: int, b: str = "x", *rest, key=None, **more) -> str:
            """Method doc."""
            return "method %s %s" % (a, b)

        @classmethod
        def cmethod(cls, a: int) -> str:
            """Classmethod doc."""
            return "cmethod %s %s" % (cls.__name__, a)

        @staticmethod
        def smethod(a: int, b: int = 2) -> int:
            """Staticmethod doc."""
            return a + b

        def inherited(self, z):
            return "inherited %s" % z

    class Sub(Base):
        pass

    module = types.ModuleType("tr_probe_wrapping")

    def function(p, q=3):
        """Function doc."""
        return p * q

    function.__module__ = module.__name__
    module.function = function
    module.builtin = math.hypot  # a C function
    return Base, Sub, module


class Probe(TraceRunInstrumentor):
    library = ""

    def __init__(self):
        super().__init__()
        self.targets = []

    def _patch(self, **kwargs):
        for owner, attr in self.targets:
            self.wrap(owner, attr, record)


SEEN: list = []


def record(wrapped, instance, args, kwargs):
    SEEN.append((getattr(instance, "__name__", type(instance).__name__ if instance is not None else None), args))
    return wrapped(*args, **kwargs)


TARGETS = [("Base", "method"), ("Base", "cmethod"), ("Base", "smethod"), ("Sub", "inherited"),
           ("module", "function"), ("module", "builtin")]


def owners():
    Base, Sub, module = make_classes()
    return {"Base": Base, "Sub": Sub, "module": module}


@pytest.fixture
def pair():
    """(ours, wrapt's): the same targets wrapped by Probe and by the whole of wrapt."""
    import wrapt

    ours, theirs = owners(), owners()
    stored = {(o, a): (ours[o].__dict__.get(a), vars(ours[o]).copy()) for o, a in TARGETS}
    probe = Probe()
    probe.targets = [(ours[o], a) for o, a in TARGETS]
    probe.instrument(skip_dep_check=True)
    for o, a in TARGETS:
        wrapt.wrap_function_wrapper(theirs[o], a, record)
    yield ours, theirs, probe, stored
    if probe.is_instrumented_by_opentelemetry:
        probe.uninstrument()
    type(probe)._instance = None


def observe(owner_map):
    """What a caller can see of every target, and what the wrapper is told on each kind of call."""
    Base, Sub, module = owner_map["Base"], owner_map["Sub"], owner_map["module"]
    obj, sub = Base(), Sub()
    out = {}
    for o, a in TARGETS:
        value = getattr(owner_map[o], a)
        raw = vars(owner_map[o]).get(a, value)
        try:
            signature = str(inspect.signature(value))
        except (TypeError, ValueError) as exc:
            signature = type(exc).__name__
        out[o + "." + a] = {
            "signature": signature, "name": value.__name__, "qualname": getattr(value, "__qualname__", None),
            "doc": value.__doc__, "module": value.__module__,
            "has_wrapped": getattr(raw, "__wrapped__", None) is not None,
            "isinstance_raw": [t.__name__ for t in (types.FunctionType, types.BuiltinFunctionType, classmethod,
                                                   staticmethod, types.MethodType) if isinstance(raw, t)],
            "isinstance_value": [t.__name__ for t in (types.FunctionType, types.BuiltinFunctionType,
                                                     types.MethodType) if isinstance(value, t)],
            "callable": callable(value),
        }
    out["bound_signature"] = str(inspect.signature(obj.method))
    del SEEN[:]
    calls = [obj.method(1, "y"), Base.method(obj, 2), Base.cmethod(3), obj.cmethod(4), Sub.cmethod(5),
             Base.smethod(6), obj.smethod(7, b=1), sub.inherited(8), Sub.inherited(sub, 9),
             module.function(10), module.builtin(3, 4)]
    out["calls"] = calls
    out["seen"] = list(SEEN)
    return out


def test_observable_behaviour_is_wrapts(pair):
    ours, theirs, _, _ = pair
    mine, reference = observe(ours), observe(theirs)
    assert mine == reference
    # and the wrapper saw every call, with the instance wrapt gives it
    assert [s[0] for s in mine["seen"][:10]] == ["Base", "Base", "Base", "Base", "Sub", None, None, "Sub", "Sub",
                                                None]
    assert mine["seen"][10][0] in (None, "math")  # a C function's instance: wrapt 1 says its __self__
    assert mine["Base.method"]["signature"] == "(self, a: 'int', b: 'str' = 'x', *rest, key=None, **more) -> 'str'"
    assert mine["bound_signature"] == "(a: 'int', b: 'str' = 'x', *rest, key=None, **more) -> 'str'"
    assert mine["Base.method"]["doc"] == "Method doc." and mine["module.builtin"]["name"] == "hypot"
    assert mine["module.builtin"]["isinstance_raw"] == ["builtin_function_or_method"]
    assert mine["Base.cmethod"]["isinstance_raw"] == ["classmethod"]


PLAIN_METHODS = [("Base", "method"), ("Sub", "inherited")]  # sync Python functions of a class


def test_wrappers_are_plain_functions_for_plain_methods_and_wrapts_own_classes_otherwise(pair):
    import wrapt

    ours, _, _, stored = pair
    for o, a in TARGETS:
        raw = ours[o].__dict__[a]
        if (o, a) in PLAIN_METHODS:
            assert type(raw) is types.FunctionType and raw.__dict__["_trace_run_wrapper"] is record, (o, a)
        else:
            assert type(raw) is wrapt.FunctionWrapper, (o, a)
            assert isinstance(raw, getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy))
        assert wrapping.is_wrapper(raw) and raw._self_trace_run is True
        original = stored[(o, a)][0]
        if original is not None:
            assert raw.__wrapped__ is original, (o, a)
            assert not wrapping.is_wrapper(original)
    # Sub had no `inherited` of its own: the wrapper shadows Base's, which is what it wraps
    assert ours["Sub"].__dict__["inherited"].__wrapped__ is ours["Base"].__dict__["inherited"]


def test_generator_and_coroutine_methods_stay_function_wrappers_and_look_as_they_did():
    import asyncio

    import wrapt

    def make():
        class Gen:
            def gen(self, n):
                yield from range(n)

            async def coro(self, n):
                return n * 2

            async def agen(self, n):
                yield n

            def plain(self, n, *, key="k"):
                if n < 0:
                    raise ValueError("negative %s" % n)
                return (n, key)

        class Child(Gen):
            def plain(self, n, *, key="k"):  # an override calling the wrapped method through super()
                return ("child",) + super().plain(n, key=key)

        return Gen, Child

    ours, theirs = make(), make()
    probe = Probe()
    probe.targets = [(ours[0], name) for name in ("gen", "coro", "agen", "plain")]
    probe.instrument(skip_dep_check=True)
    for name in ("gen", "coro", "agen", "plain"):
        wrapt.wrap_function_wrapper(theirs[0], name, record)
    try:
        for name, check in (("gen", inspect.isgeneratorfunction), ("coro", inspect.iscoroutinefunction),
                            ("agen", inspect.isasyncgenfunction)):
            assert type(vars(ours[0])[name]) is wrapt.FunctionWrapper, name
            assert check(getattr(ours[0], name)) and check(getattr(ours[0](), name)), name
            assert check(getattr(theirs[0], name)), name
        assert type(vars(ours[0])["plain"]) is types.FunctionType
        results = []
        for Gen, Child in (ours, theirs):
            del SEEN[:]
            obj, child = Gen(), Child()
            got = [list(obj.gen(3)), asyncio.run(obj.coro(4)), obj.plain(5, key="z"), Gen.plain(obj, 6),
                   child.plain(7)]
            with pytest.raises(ValueError, match="negative -1"):
                obj.plain(-1)
            with pytest.raises(TypeError):
                obj.plain()  # the original's own TypeError, from inside the wrapper
            results.append((got, list(SEEN), str(inspect.signature(obj.plain)), Gen.plain.__qualname__))
        assert results[0] == results[1]
        assert results[0][1][-3] == ("Child", (7,))  # super().plain(...) went through the wrapper
    finally:
        probe.uninstrument()
        type(probe)._instance = None
    assert not any(wrapping.is_wrapper(v) for v in vars(ours[0]).values())


def test_uninstrument_puts_back_the_exact_originals(pair):
    ours, _, probe, stored = pair
    probe.uninstrument()
    for o, a in TARGETS:
        original, before = stored[(o, a)]
        assert ours[o].__dict__.get(a) is original, (o, a)
        assert {k: v for k, v in vars(ours[o]).items() if k != "__weakref__"} == \
            {k: v for k, v in before.items() if k != "__weakref__"}
    assert "inherited" not in ours["Sub"].__dict__  # the shadowing slot is gone, not set to Base's
    del SEEN[:]
    assert observe(ours)["seen"] == []


def test_instances_pickle_as_wrapt_allows(pair):
    ours, theirs, _, _ = pair
    # Instances of a class with wrapped methods pickle (by reference to the class) and keep being traced;
    # the wrapper objects themselves do not pickle, with wrapt as here.
    global PickledBase
    PickledBase = ours["Base"]
    PickledBase.__qualname__ = "PickledBase"
    PickledBase.__module__ = __name__
    copy = pickle.loads(pickle.dumps(PickledBase()))
    del SEEN[:]
    assert copy.method(1) == "method 1 x" and SEEN == [("Base", (1,))]
    for owner in (ours, theirs):
        with pytest.raises(NotImplementedError):
            pickle.dumps(owner["module"].__dict__["function"])


def test_a_second_wrap_of_ours_is_skipped_and_someone_elses_is_wrapped():
    import wrapt

    ours = owners()
    Base = ours["Base"]
    wrapt.wrap_function_wrapper(Base, "smethod", record)  # someone else's, before us
    theirs = Base.__dict__["smethod"]
    probe = Probe()
    probe.targets = [(Base, "method"), (Base, "method"), (Base, "smethod")]
    try:
        probe.instrument(skip_dep_check=True)
        assert Base.__dict__["method"].__wrapped__ is not None
        assert not wrapping.is_wrapper(Base.__dict__["method"].__wrapped__)  # not wrapped twice
        assert Base.__dict__["smethod"].__wrapped__ is theirs
        del SEEN[:]
        assert Base.smethod(1) == 3 and len(SEEN) == 2  # ours, then theirs
    finally:
        probe.uninstrument()
        type(probe)._instance = None
    assert Base.__dict__["smethod"] is theirs


def _fresh(code: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean_env(**env), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


LOAD_PROBE = """
import json, sys
from trace_run.core import wrapping
before = sorted(m for m in ("asyncio", "inspect", "wrapt.wrappers", "wrapt.decorators", "wrapt.patches")
                if m in sys.modules)
import wrapt
unexecuted = "ObjectProxy" not in vars(wrapt)
same = (wrapt.FunctionWrapper is wrapping.FunctionWrapper,
        getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy) is wrapping.ObjectProxy)

@wrapt.decorator
def twice(wrapped, instance, args, kwargs):
    return 2 * wrapped(*args, **kwargs)

@twice
def three():
    return 3

import wrapt.importer
print(json.dumps({"lean": wrapping.lean, "before": before, "unexecuted": unexecuted, "same": same,
                  "decorated": three(), "version": wrapt.__version__,
                  "c": wrapt.FunctionWrapper is getattr(sys.modules.get("wrapt._wrappers"), "FunctionWrapper", 0),
                  "leaves": [hasattr(wrapt, "_wrappers"),
                             hasattr(wrapt, "exceptions") or "wrapt.exceptions" not in sys.modules],  # wrapt 1: none
                  "dir": "ObjectProxy" in dir(wrapt), "getattr_left": "__getattr__" in vars(wrapt)}))
"""


def test_loaded_without_wraps_top_level_and_whole_when_the_program_asks():
    seen = _fresh(LOAD_PROBE)
    assert seen["lean"] is True and seen["before"] == []
    assert seen["unexecuted"] is True  # `import wrapt` alone still runs nothing
    assert seen["same"] == [True, True] and seen["decorated"] == 6 and seen["c"] is True
    assert seen["version"] and seen["leaves"] == [True, True] and seen["dir"] is True
    assert seen["getattr_left"] is False


def test_a_program_probing_every_module_for_a_dunder_does_not_run_wrapts_top_level():
    """CPython's regrtest asks every module in sys.modules for `__warningregistry__` between two tests. The
    lazy package answered that by running wrapt/__init__.py (asyncio and a dozen modules imported) in the
    middle of that walk: "dictionary changed size during iteration"."""
    seen = _fresh("""
        import json, sys
        from trace_run.core import wrapping
        import wrapt
        walked = 0
        for name, module in sys.modules.items():
            hasattr(module, "__warningregistry__")
            getattr(module, "__some_tools_marker__", None)
            walked += 1
        print(json.dumps({"lean": wrapping.lean, "walked": walked, "asyncio": "asyncio" in sys.modules,
                          "unexecuted": "ObjectProxy" not in vars(wrapt), "version": wrapt.__version__,
                          "whole": callable(wrapt.decorator)}))
    """)
    assert seen["lean"] is True and seen["walked"] > 20 and seen["asyncio"] is False and seen["unexecuted"] is True
    assert seen["version"] and seen["whole"] is True  # wrapt's own dunders and names still complete it


def test_wrapt_imported_first_or_extensions_off_fall_back_to_the_whole_package():
    first = _fresh("import wrapt\n" + LOAD_PROBE)
    assert first["lean"] is False and first["same"] == [True, True] and first["decorated"] == 6
    off = _fresh(LOAD_PROBE, WRAPT_DISABLE_EXTENSIONS="1")
    assert off["lean"] is False and off["same"] == [True, True] and off["c"] is False and off["decorated"] == 6


def test_threads_that_ask_wrapt_at_once_all_get_it_whole():
    seen = _fresh("""
        import json, threading
        from trace_run.core import wrapping
        import wrapt
        got, start = [], threading.Barrier(8)
        def ask():
            start.wait()
            got.append(wrapt.FunctionWrapper is wrapping.FunctionWrapper and callable(wrapt.decorator))
        threads = [threading.Thread(target=ask) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(json.dumps(got))
    """)
    assert seen == [True] * 8


def test_the_agent_patching_flask_and_requests_imports_no_asyncio_packaging_or_instrumentor_base():
    code = ("import sys, json%s, flask, requests\n"
            "from trace_run.core import wrapping\n"
            "print(json.dumps({'mods': sorted(m for m in ('asyncio', 'packaging', 'wrapt.wrappers',\n"
            "    'opentelemetry.instrumentation.instrumentor', 'opentelemetry.instrumentation.utils',\n"
            "    'opentelemetry.instrumentation._semconv') if m in sys.modules),\n"
            "  'patched': [wrapping.is_wrapper(vars(c)[a]) for c, a in\n"
            "    ((flask.Flask, 'wsgi_app'), (requests.adapters.HTTPAdapter, 'send'))]}))")
    # The baseline imports what the agent's SDK set-up imports anyway (with opentelemetry-api 1.33, the
    # floor, opentelemetry.context imports `deprecated`, which imports the whole of wrapt).
    sdk = ", opentelemetry.propagate, opentelemetry.sdk.trace, opentelemetry.sdk.trace.export"
    bare = run_traced(["python", "-c", code % sdk], trace_run=False, check=True)
    assert json.loads(bare.stdout)["patched"] == [False, False]
    bare_mods = json.loads(bare.stdout)["mods"]
    traced = json.loads(run_traced(["python", "-c", code % ""], check=True).stdout)
    assert traced["patched"] == [True, True]
    assert traced["mods"] == bare_mods


def test_a_keyword_named_self_reaches_the_method_as_it_would_bare():
    """A shim `method(self, *args, **kwargs)` took a keyword named `self` for its own: `submit(fn, self=2)`
    raised "got multiple values for argument 'self'" (CPython 3.13's test_submit_keyword, through
    ThreadPoolExecutor.submit). Its `self` is positional-only: the keyword is the method's to take or refuse."""

    def make():
        class Executor:
            def submit(self, fn, /, *args, **kwargs):
                return fn(*args, **kwargs)

            def plain(self, a):
                return a

            def by_keyword(self, fn, *args, **kwargs):  # its self may come by keyword: Executor.by_keyword(self=e)
                return fn(*args, **kwargs)

        return Executor

    ours, theirs, bare = make(), make(), make()
    probe = Probe()
    probe.targets = [(ours, "submit"), (ours, "plain"), (ours, "by_keyword")]
    probe.instrument(skip_dep_check=True)
    try:
        import wrapt

        wrapt.wrap_function_wrapper(theirs, "submit", record)
        wrapt.wrap_function_wrapper(theirs, "plain", record)
        wrapt.wrap_function_wrapper(theirs, "by_keyword", record)
        assert type(ours.__dict__["submit"]) is types.FunctionType  # the plain-function shim, not wrapt's

        def capture(*args, **kwargs):
            return args, kwargs

        def outcome(call):
            try:
                return ("ok", call())
            except TypeError as exc:
                return ("TypeError", str(exc).split("() ", 1)[-1])

        for cls in (ours, theirs, bare):
            assert cls().submit(capture, 1, self=2, fn=3) == ((1,), {"self": 2, "fn": 3})
            assert cls.submit(cls(), capture, self=4) == ((), {"self": 4})
        # a method that has no such keyword refuses it as it does bare
        assert outcome(lambda: ours().plain(1, self=2)) == outcome(lambda: bare().plain(1, self=2))
        assert outcome(lambda: ours().plain(1, self=2))[0] == "TypeError"
        # a self that is not positional-only binds by keyword, and clashes with one, as bare
        for cls in (ours, bare):
            assert cls.by_keyword(self=cls(), fn=capture) == ((), {})
            assert outcome(lambda cls=cls: cls().by_keyword(capture, self=2))[0] == "TypeError"
    finally:
        probe.uninstrument()
        type(probe)._instance = None


def test_thread_pool_submit_with_keywords_named_self_and_fn_under_the_agent():
    code = textwrap.dedent("""
        import http.client  # a traced library: the agent applies its instrumentors, thread pools' among them
        import json
        from concurrent.futures import ThreadPoolExecutor
        def capture(*args, **kwargs):
            return [list(args), kwargs]
        with ThreadPoolExecutor(1) as executor:
            result = executor.submit(capture, 1, self=2, fn=3).result()
        wrapped = "_trace_run_wrapper" in getattr(ThreadPoolExecutor.__dict__["submit"], "__dict__", {})
        print(json.dumps([result, wrapped]))
    """)
    bare = json.loads(run_traced(["python", "-c", code], trace_run=False, check=True).stdout)
    traced = json.loads(run_traced(["python", "-c", code], env=clean_env(OTEL_TRACES_EXPORTER="none"),
                                   check=True).stdout)
    assert bare == [[[1], {"self": 2, "fn": 3}], False]
    assert traced == [[[1], {"self": 2, "fn": 3}], True]

"""wrapt's C `FunctionWrapper`, without wrapt's package top level.

`import wrapt` executes wrapt/__init__.py, which in wrapt 2 imports asyncio,
inspect and a dozen modules of its own (~20-50 ms on a process start); the
instrumentors need only the C extension's FunctionWrapper and ObjectProxy.
So the package is put in sys.modules *unexecuted* (its `__path__` set, so its
submodules import as usual) and its two leaf modules `wrapt.exceptions` and
`wrapt._wrappers` (the C extension, which imports `wrapt.exceptions` itself)
are loaded alone. The package's own code runs the first time anyone asks it
for a name it does not hold yet (a module `__getattr__`): `import wrapt` in
the program, upstream instrumentors or tests still gets the whole of wrapt,
built on the very classes loaded here, so `isinstance` agrees everywhere.

Where that cannot be done (wrapt imported already, installed somewhere the
path finder does not see, no C extension, WRAPT_DISABLE_EXTENSIONS set), it
is `import wrapt`, as before: the same guarantees at the old cost.

A plain method (a sync Python function defined in a class) is wrapped by a
plain function instead (`method_wrapper`): a FunctionWrapper call costs
~0.8 us, the function ~0.35 us, on every request's hottest methods. It keeps
what callers see of the FunctionWrapper (it is a function, binds as one, has
the original's names, doc and signature through `__wrapped__`, and the
wrapper is told the same `wrapped, instance, args, kwargs`); anything else
(class and static methods, builtins, generators, coroutines, module
functions, someone else's wrapper) stays a FunctionWrapper.
"""

from __future__ import annotations

import os
import sys
from _thread import RLock
from functools import update_wrapper
from types import FunctionType
from typing import Any, Callable, Tuple

__all__ = ["FunctionWrapper", "ObjectProxy", "is_wrapper", "lean", "method_wrapper", "original_of",
           "wrap_function_wrapper"]


# Held while wrapt/__init__.py runs. A module global, not a closure's: eventlet's monkey_patch greens
# the RLocks it finds in modules and warns about any other made before it ran.
_lock = RLock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# The dunder names wrapt/__init__.py sets (wrapt 1 and 2). Any other dunder a module is probed for
# (`__warningregistry__`, which CPython's regrtest looks for on every module in sys.modules) is not
# wrapt's: asking for it runs nothing. Running wrapt there imported asyncio and a dozen modules in the
# middle of the program's walk of sys.modules ("dictionary changed size during iteration").
_WRAPT_DUNDERS = frozenset(("__version__", "__version_info__", "__all__"))


def _complete_on_demand(package: Any, spec: Any) -> None:
    """Give the unexecuted package a module `__getattr__` (and `__dir__`) that runs wrapt/__init__.py
    once, under a lock, then answer from the package as usual."""
    running = []

    def __getattr__(name: str) -> Any:  # noqa: N807 - a module's __getattr__ (PEP 562)
        if name[:2] == "__" == name[-2:] and name not in _WRAPT_DUNDERS:
            raise AttributeError("module 'wrapt' has no attribute %r" % name)
        with _lock:
            if package.__dict__.get("__getattr__") is __getattr__ and not running:
                running.append(True)  # wrapt's own code asking for a name it has not set yet: AttributeError
                try:
                    spec.loader.exec_module(package)
                    for hook in ("__getattr__", "__dir__"):
                        if package.__dict__.get(hook) in (__getattr__, __dir__):
                            del package.__dict__[hook]
                finally:
                    running.clear()
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError("module 'wrapt' has no attribute %r" % name) from None

    def __dir__() -> list:  # noqa: N807
        __getattr__("__name__")
        return sorted(package.__dict__)

    package.__getattr__ = __getattr__
    package.__dir__ = __dir__


def _load_lean() -> Any:
    """wrapt's C extension module, the package left unexecuted; None where that cannot be done."""
    if "wrapt" in sys.modules or os.environ.get("WRAPT_DISABLE_EXTENSIONS"):
        return None
    import importlib.util

    spec = importlib.util.find_spec("wrapt")
    if spec is None or not spec.submodule_search_locations or not hasattr(spec.loader, "exec_module"):
        return None
    package = importlib.util.module_from_spec(spec)
    _complete_on_demand(package, spec)
    before = set(sys.modules)
    sys.modules["wrapt"] = package
    try:
        # Through the import system (module locks, the parent's attribute set): the C extension
        # imports wrapt.exceptions itself, which finds the unexecuted package and stops there.
        return importlib.import_module("wrapt._wrappers")
    except BaseException:
        for name in [n for n in sys.modules if n == "wrapt" or n.startswith("wrapt.")]:
            if name not in before:
                del sys.modules[name]
        raise


def _classes() -> Tuple[type, type, bool]:
    """(FunctionWrapper, the ObjectProxy every wrapt wrapper is an instance of, loaded lean?)."""
    try:
        c = _load_lean()
        if c is not None:
            return c.FunctionWrapper, c.ObjectProxy, True
    except Exception:
        pass  # the whole package instead, as before
    import wrapt

    return wrapt.FunctionWrapper, getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy), False


# The C ObjectProxy: in wrapt 2 `wrapt.BaseObjectProxy` (`wrapt.ObjectProxy` is a Python subclass
# of it that FunctionWrapper does not derive from); in wrapt 1 `wrapt.ObjectProxy`.
FunctionWrapper, ObjectProxy, lean = _classes()


def original_of(owner: Any, attr: str) -> Any:
    """The object `attr` names on `owner` as stored, not bound: for a class, from the `__dict__` of
    the class in its MRO that defines it (a classmethod stays a classmethod, as wrapt resolves it)."""
    if isinstance(owner, type):
        for cls in owner.__mro__:
            if attr in cls.__dict__:
                return cls.__dict__[attr]
    return getattr(owner, attr)


# generator, coroutine, iterable coroutine, async generator (inspect.CO_*; inspect is not imported
# on the start-up path): a function returning what a plain wrapper would not be told apart from
_NOT_PLAIN = 0x20 | 0x80 | 0x100 | 0x200


def method_wrapper(original: Callable, wrapper: Callable) -> Callable:
    """A plain function standing for the method `original`, calling `wrapper(bound original, instance,
    args, kwargs)` as a FunctionWrapper would; `__wrapped__` is the original."""
    bind = original.__get__

    # Its first parameter taken as the original takes it: positional-only where the original's is (a keyword
    # named like it is then the method's **kwargs', as in ThreadPoolExecutor.submit(fn, /, *args, **kwargs);
    # a C method's always is), else by position or keyword (`Class.method(self=obj)` binds it, as bare).
    code = getattr(original, "__code__", None)
    if code is None or code.co_posonlyargcount:
        def method(self, /, *args, **kwargs):
            return wrapper(bind(self), self, args, kwargs)
    else:
        def method(self, *args, **kwargs):
            return wrapper(bind(self), self, args, kwargs)

    update_wrapper(method, original)
    method._trace_run_wrapper = wrapper
    return method


def is_wrapper(obj: Any) -> bool:
    """A wrapper made here or by wrapt (someone else's too). By type, not isinstance: a lazy object
    (django.conf.settings) would set itself up to answer `__class__`."""
    kind = type(obj)
    return issubclass(kind, ObjectProxy) or (kind is FunctionType and "_trace_run_wrapper" in obj.__dict__)


def wrap_function_wrapper(owner: Any, attr: str, wrapper: Callable) -> Any:
    """wrapt.wrap_function_wrapper(owner, attr, wrapper) for an object (not a module name): set
    owner.attr to a wrapper of what it holds (method_wrapper's for a plain method), and return that."""
    original = original_of(owner, attr)
    if isinstance(owner, type) and type(original) is FunctionType and not original.__code__.co_flags & _NOT_PLAIN:
        new = method_wrapper(original, wrapper)
    else:
        new = FunctionWrapper(original, wrapper)
    setattr(owner, attr, new)
    return new

"""Post-import hooks: run a callback right after a module is first imported.

A small meta-path finder instead of wrapt's (wrapt 2 imports asyncio, ~50 ms
on every process start). It only looks at the names it was asked to watch,
so the cost for every other import is one dict lookup.

It is also the agent's one re-entrancy mechanism. The SDK and the exporter
are built inside `held()`: the hooks their own imports trigger on that thread
(`opentelemetry.trace`, `requests`, ...) wait and run right after the build
returns, so a build never re-enters itself. And the finder knows which
`track()`ed modules are executing right now, so work that would import one of
them half-initialised (building an exporter) can wait: `busy()`.
"""

import os
import sys
from _thread import RLock, get_ident  # not `threading`: ~5 ms on every process start

_hooks: dict = {}  # module name -> [callback(module)]
_tracked: set = set()  # names whose execution `busy()` reports, hooked or not
_executing: dict = {}  # thread id -> names of the watched modules that thread is executing now
_held: dict = {}  # thread id -> [(name, module, callbacks)] waiting for its held() to end
_lock = RLock()
_finder = None


def _after_fork_in_child() -> None:
    """Only this thread lives on in a child: the others' imports and builds are not going on here."""
    global _lock
    _lock = RLock()
    me = get_ident()
    for table in (_executing, _held):
        for tid in [t for t in table if t != me]:
            del table[tid]


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Loader:
    """Wraps the real loader; runs the hooks once the module has executed."""

    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def __getattr__(self, attr):
        return getattr(self._loader, attr)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        # The module must see its own loader, not us.
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        name, tid = self._name, get_ident()
        with _lock:
            _executing.setdefault(tid, []).append(name)
        try:
            self._loader.exec_module(module)
        finally:
            with _lock:  # executed (or failed): its hooks see it complete
                names = _executing.get(tid, [])
                if name in names:
                    names.remove(name)
                if not names:
                    _executing.pop(tid, None)
        _fire(name, module)


class _Finder:
    def __init__(self):
        self._busy: set = set()

    def find_spec(self, fullname, path=None, target=None):
        if (fullname not in _hooks and fullname not in _tracked) or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname)
        return spec

    def invalidate_caches(self) -> None:
        pass


def _fire(name: str, module) -> None:
    with _lock:
        callbacks = _hooks.pop(name, ())
    if not callbacks:
        return
    waiting = _held.get(get_ident())
    if waiting is not None:  # this thread is building: run them when it is done
        waiting.append((name, module, callbacks))
        return
    _run(name, module, callbacks)


def _run(name: str, module, callbacks) -> None:
    for callback in callbacks:
        try:
            callback(module)
        except Exception as exc:  # a hook never breaks the import
            from . import guard

            guard.report("import hook for %s" % name, exc)


class _Held:
    __slots__ = ("outer",)

    def __enter__(self):
        tid = get_ident()
        self.outer = tid not in _held
        if self.outer:
            _held[tid] = []
        return self

    def __exit__(self, *exc):
        if self.outer:
            for name, module, callbacks in _held.pop(get_ident()):
                _run(name, module, callbacks)
        return False


def held() -> _Held:
    """`with held():` the hooks this thread's imports trigger wait until the block ends (nesting: the outer one)."""
    return _Held()


def track(names) -> None:
    """Watch these modules' execution too (without hooks), for `busy()`."""
    global _finder
    with _lock:
        _tracked.update(names)
        if _finder is None:
            _finder = _Finder()
            sys.meta_path.insert(0, _finder)


def building() -> bool:
    """True while this thread is inside `held()`: what it asks for again is already being built."""
    return get_ident() in _held


def busy() -> bool:
    """True while this thread is inside `held()` or a tracked module is executing (in any thread)."""
    if get_ident() in _held:
        return True
    with _lock:
        return any(not _tracked.isdisjoint(names) for names in _executing.values())


def when_imported(name: str, callback) -> None:
    """Call callback(module) after `name` is imported; at once if it already is."""
    when_imported_each(((name, callback),))


def when_imported_each(pairs) -> None:
    """when_imported(name, callback) for each (name, callback) pair, in order, under one lock (the agent
    arms ~30 at every process start). Callbacks of modules already imported run once all are armed."""
    now = []
    armed = []
    with _lock:
        for name, callback in pairs:
            module = sys.modules.get(name)
            if module is None:
                _hooks.setdefault(name, []).append(callback)
                armed.append(name)
            else:
                now.append((callback, module))
    if _finder is None:
        track(())
    for callback, module in now:
        callback(module)
    for name in armed:  # imported by another thread meanwhile, before our finder saw it
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__spec__", None) is not None:
            if not isinstance(module.__spec__.loader, _Loader):
                _fire(name, module)

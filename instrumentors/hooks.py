"""Post-import hooks: run a callback right after a module is first imported.

A small meta-path finder instead of wrapt's (wrapt 2 imports asyncio, ~50 ms
on every process start). It only looks at the names it was asked to watch,
so the cost for every other import is one dict lookup.
"""

import sys
from _thread import RLock  # not `threading`: ~5 ms on every process start

_hooks: dict = {}  # module name -> [callback(module)]
_lock = RLock()
_finder = None


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
        self._loader.exec_module(module)
        _fire(self._name, module)


class _Finder:
    def __init__(self):
        self._busy: set = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _hooks or fullname in self._busy:
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
    # The module has executed completely; say so while the hooks run (the import
    # system clears the flag only when we return).
    spec = getattr(module, "__spec__", None)
    initializing = getattr(spec, "_initializing", False)
    if initializing:
        spec._initializing = False
    try:
        for callback in callbacks:
            try:
                callback(module)
            except Exception as exc:  # a hook never breaks the import
                from . import guard

                guard.report("import hook for %s" % name, exc)
    finally:
        if initializing:
            spec._initializing = True


def when_imported(name: str, callback) -> None:
    """Call callback(module) after `name` is imported; at once if it already is."""
    global _finder
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    with _lock:
        _hooks.setdefault(name, []).append(callback)
        if _finder is None:
            _finder = _Finder()
            sys.meta_path.insert(0, _finder)
    # It may have been imported by another thread meanwhile.
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__spec__", None) is not None:
        if not isinstance(module.__spec__.loader, _Loader):
            _fire(name, module)


def pending() -> list:
    with _lock:
        return sorted(_hooks)

"""Whether an object's attributes are still inline values (CPython 3.11, 3.12) or a dict has been made of them.

On those interpreters an instance keeps its attributes as inline values until something reads its `__dict__`;
from then on they live in a dict, and every read of them by the interpreter's specialized code takes a slower
path. The instrumentors must not do that to the program's objects."""

from __future__ import annotations

import gc


def dict_made(obj, key: str) -> bool:
    """Has `obj` a dict of its attributes (one holding `key`) among what it refers to? The garbage collector's
    traversal shows the values while they are inline, the dict once it is made."""
    return any(type(r) is dict and key in r for r in gc.get_referents(obj))


def observable() -> bool:
    """Does this interpreter show the difference (3.11 and 3.12 do; before 3.11 every instance has a dict)?"""
    class Probe:
        def __init__(self):
            self.host = 1

    kept, read = Probe(), Probe()
    assert vars(read) == {"host": 1}  # (the read makes the dict)
    return not dict_made(kept, "host") and dict_made(read, "host")

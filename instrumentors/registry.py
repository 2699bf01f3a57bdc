"""Which libraries trace-run instruments, and where each instrumentor lives.

Data only: the agent arms one post-import hook per entry (on `modules`) and
imports `target` only when the program imports the library. bootstrap's
catalogue and the README's supported-libraries table are checked against it.
"""


class Entry:
    __slots__ = ("name", "modules", "target", "distribution", "supported", "aliases", "extras")

    def __init__(self, name, modules, target, distribution, supported, aliases=(), extras=()):
        self.name = name  # the name OTEL_PYTHON_DISABLED_INSTRUMENTATIONS uses
        self.modules = modules  # importing any of these activates the instrumentor
        self.target = target  # "module:Class" under trace_run.instrumentors
        self.distribution = distribution  # PyPI name (None for the standard library)
        self.supported = supported  # version range we support and test
        self.aliases = aliases  # other names users (and upstream) use for it
        # (module, method): when `module` is imported, call instrumentor.method(module).
        # Armed at start like `modules`: a hook armed later, from inside the import
        # that pulls in the instrumented library, would miss a module already loading.
        self.extras = extras


_P = "trace_run.instrumentors."

BUILTIN: dict = {
    e.name: e
    for e in (
        Entry("flask", ("flask",), _P + "flask:FlaskInstrumentor", "flask", ">=2.0,<4"),
        Entry("requests", ("requests",), _P + "requests:RequestsInstrumentor", "requests", ">=2.20,<3"),
        Entry("urllib3", ("urllib3",), _P + "urllib3:Urllib3Instrumentor", "urllib3", ">=1.26,<3"),
        Entry("urllib", ("http.client",), _P + "http_client:HttpClientInstrumentor", None, "stdlib",
              aliases=("http.client", "http_client")),
        Entry("httpx", ("httpx",), _P + "httpx:HttpxInstrumentor", "httpx", ">=0.23,<1"),
        Entry("psycopg", ("psycopg",), _P + "psycopg:PsycopgInstrumentor", "psycopg", ">=3.1,<4",
              extras=(("psycopg_pool", "patch_pool"),)),
        Entry("psycopg2", ("psycopg2",), _P + "psycopg2:Psycopg2Instrumentor", "psycopg2", ">=2.8,<3",
              aliases=("psycopg2-binary",)),
        Entry("sqlite3", ("sqlite3",), _P + "sqlite3:Sqlite3Instrumentor", None, "stdlib"),
        Entry("redis", ("redis",), _P + "redis:RedisInstrumentor", "redis", ">=4.0,<9"),
        Entry("pika", ("pika",), _P + "pika:PikaInstrumentor", "pika", ">=1.2,<2"),
        Entry("celery", ("celery",), _P + "celery:CeleryInstrumentor", "celery", ">=5.2,<6"),
        # Armed when tracing starts (every program imports threading at start).
        Entry("threading", ("opentelemetry.trace",), _P + "threading_context:ThreadingContextInstrumentor", None,
              "stdlib", aliases=("concurrent.futures",)),
    )
}

# Upstream instrumentor entry-point names that cover a library we cover
# (their instrumentor is skipped in favour of ours).
COVERED_NAMES = set(BUILTIN) | {a for e in BUILTIN.values() for a in e.aliases} | {"wsgi", "dbapi"}


def lookup(name: str):
    """The entry for a library name or alias, or None."""
    name = name.strip().lower()
    entry = BUILTIN.get(name)
    if entry is not None:
        return entry
    for e in BUILTIN.values():
        if name in e.aliases:
            return e
    return None


def load(entry: Entry):
    """Import and return the instrumentor class (only when its library is imported)."""
    import importlib

    module_name, _, cls_name = entry.target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)

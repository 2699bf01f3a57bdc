"""Which libraries trace-run instruments: one declaration per library, everything else derived.

Data only: the agent arms one post-import hook per entry (on `modules`, and
on each of `submodules`) and imports `target` only when the program imports
the library. bootstrap's catalogue, the upstream instrumentor names trace-run
covers (agent/thirdparty.py), the README's "Supported libraries" table
(`python -m trace_run.instrumentors.registry --write README.md`) and the
agent's table of hooks, which its start arms without importing this module
(`--write-hooks agent/boot.py`), are made from it.
"""

# No `from __future__ import annotations` (imported at every start, it costs one module more): the two
# annotations that need it are quoted.
import sys


class Entry:
    """One library. A plain class, not a NamedTuple: `typing` is not worth its start-up time here."""

    __slots__ = ("name", "modules", "target", "distributions", "supported", "title", "spans", "aliases",
                 "submodules", "stdlib_label")

    def __init__(self, name: str, modules: tuple, target: str, distributions: tuple, supported: str, title: str,
                 spans: str, aliases: tuple = (), submodules: tuple = (), stdlib_label: str = ""):
        self.name = name  # the name OTEL_PYTHON_DISABLED_INSTRUMENTATIONS uses
        self.modules = modules  # importing any of these activates the instrumentor
        self.target = target  # "module:Class" under trace_run.instrumentors
        self.distributions = distributions  # PyPI distributions it traces, main one first (empty: stdlib)
        self.supported = supported  # version range we support and test ("stdlib")
        self.title = title  # the README's "Library" column
        self.spans = spans  # the README's "Spans" column
        self.aliases = aliases  # other names users (and upstream entry points) use for it
        # (module, method): when `module` is imported, call instrumentor.method(module) (a later
        # part of the library to patch). Armed at start like `modules`: a hook armed later, from
        # inside the import that pulls in the library, would miss a module already loading.
        self.submodules = submodules
        self.stdlib_label = stdlib_label  # trace-bootstrap's row for a standard-library entry

    @property
    def distribution(self) -> "str | None":
        return self.distributions[0] if self.distributions else None


_P = "trace_run.instrumentors."
_HTTP = "CLIENT `METHOD`"
_SQL = "CLIENT `SELECT items`"

BUILTIN: dict = {
    e.name: e
    for e in (
        Entry("flask", ("flask",), _P + "flask:FlaskInstrumentor", ("flask",), ">=2.0,<4",
              "Flask (other WSGI apps: `TraceMiddleware` by hand)", "SERVER `METHOD /route/<template>`"),
        Entry("starlette", ("starlette.applications",), _P + "starlette:StarletteInstrumentor", ("starlette",),
              ">=0.37,<2", "Starlette (other ASGI apps: `TraceMiddleware` by hand)",
              "SERVER `METHOD /route/{template}`", submodules=(("fastapi.applications", "patch_fastapi"),)),
        # Each part is patched as its module is imported: a program that serves no HTTP imports no handler.
        Entry("django", ("django",), _P + "django:DjangoInstrumentor", ("django",), ">=4.2,<6",
              "Django (WSGI and ASGI)", "SERVER `METHOD route/<template>/`",
              submodules=(("django.core.handlers.base", "patch_base"), ("django.core.handlers.wsgi", "patch_wsgi"),
                          ("django.core.handlers.asgi", "patch_asgi"),
                          ("django.core.management.base", "patch_management"))),
        Entry("requests", ("requests",), _P + "requests:RequestsInstrumentor", ("requests",), ">=2.20,<3",
              "requests", _HTTP),
        Entry("urllib3", ("urllib3",), _P + "urllib3:Urllib3Instrumentor", ("urllib3",), ">=1.26,<3", "urllib3", _HTTP),
        # One library, three names on purpose: `urllib` is the name users (and upstream's
        # OTEL_PYTHON_DISABLED_INSTRUMENTATIONS) give it; the module and class are named for what
        # they patch, http.client, which urllib.request sends through.
        Entry("urllib", ("http.client",), _P + "http_client:HttpClientInstrumentor", (), "stdlib",
              "http.client / urllib.request", _HTTP, aliases=("http.client", "http_client"),
              stdlib_label="http.client / urllib"),
        Entry("httpx", ("httpx",), _P + "httpx:HttpxInstrumentor", ("httpx",), ">=0.23,<1", "httpx (sync and async)",
              _HTTP),
        Entry("psycopg", ("psycopg",), _P + "psycopg:PsycopgInstrumentor", ("psycopg",), ">=3.1,<4",
              "psycopg 3 (+ psycopg_pool)", _SQL, submodules=(("psycopg_pool", "patch_pool"),)),
        Entry("psycopg2", ("psycopg2",), _P + "psycopg2:Psycopg2Instrumentor", ("psycopg2", "psycopg2-binary"),
              ">=2.8,<3", "psycopg2", _SQL, aliases=("psycopg2-binary",)),
        Entry("asyncpg", ("asyncpg",), _P + "asyncpg:AsyncpgInstrumentor", ("asyncpg",), ">=0.28,<1",
              "asyncpg (+ pools, prepared statements)", _SQL),
        Entry("sqlite3", ("sqlite3",), _P + "sqlite3:Sqlite3Instrumentor", (), "stdlib", "sqlite3", _SQL,
              stdlib_label="sqlite3"),
        Entry("redis", ("redis",), _P + "redis:RedisInstrumentor", ("redis",), ">=4.0,<9",
              "redis-py (sync, asyncio, pipelines)", "CLIENT `GET`"),
        Entry("pika", ("pika",), _P + "pika:PikaInstrumentor", ("pika",), ">=1.2,<2", "pika (RabbitMQ)",
              "PRODUCER `publish X`, CONSUMER `process Q`"),
        Entry("celery", ("celery",), _P + "celery:CeleryInstrumentor", ("celery",), ">=5.2,<6", "Celery",
              "PRODUCER `publish task`, CONSUMER `process task`",
              submodules=(("celery.worker.worker", "patch_worker"), ("celery.backends.base", "patch_backend"))),
        # Armed when tracing starts (every program imports threading at start).
        Entry("threading", ("opentelemetry.trace",), _P + "threading_context:ThreadingContextInstrumentor", (),
              "stdlib", "threading, ThreadPoolExecutor (context only)", "none: work keeps the caller's trace",
              aliases=("concurrent.futures",), stdlib_label="threading / concurrent.futures"),
    )
}



class SelfTraced:
    """A library that makes its own spans from release `since` on (instrumentors/self_tracing.py detects them
    and steps aside); before that, or with its tracing off, the built-in `via` traces it."""

    __slots__ = ("name", "distribution", "since", "via", "title", "spans")

    def __init__(self, name: str, distribution: str, since: str, via: str, title: str, spans: str):
        self.name = name  # its upstream instrumentor's entry-point name (never applied by the agent)
        self.distribution = distribution
        self.since = since  # the first release that traces itself
        self.via = via  # the built-in entry whose spans it gets before `since`
        self.title = title
        self.spans = spans


# fastapi.telemetry (request spans on whenever a tracer provider is set) appeared in FastAPI 0.142.0.
SELF_TRACED: dict = {
    e.name: e
    for e in (
        SelfTraced("fastapi", "fastapi", "0.142.0", "starlette",
                   "FastAPI (before 0.142.0, or with `telemetry={\"tracing\": False}`: trace-run's Starlette spans)",
                   "its own: SERVER `METHOD /route/{template}`, `fastapi.*` operations"),
    )
}

# Upstream instrumentor entry-point names that cover a library we cover or that traces itself
# (their instrumentor is skipped: ours, or the library's own spans, trace it).
COVERED_NAMES = set(BUILTIN) | {a for e in BUILTIN.values() for a in e.aliases} | {"wsgi", "dbapi"} | set(SELF_TRACED)


def lookup(name: str) -> "Entry | None":
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


# -- the README table --------------------------------------------------------------------

START, END = "<!-- libraries:start -->", "<!-- libraries:end -->"


def markdown_table() -> str:
    """The README's "Supported libraries" table."""
    rows = ["| Library | Instrumentor name | Versions | Spans |", "| --- | --- | --- | --- |"]
    rows += ["| %s | `%s` | %s | %s |" % (e.title, e.name, e.supported, e.spans) for e in BUILTIN.values()]
    rows += ["| %s | `%s` | >=%s traces itself | %s |" % (e.title, e.via, e.since, e.spans)
             for e in SELF_TRACED.values()]
    return "\n".join(rows)


# -- boot's table of the modules it hooks at start ------------------------------------------

HOOKS_START, HOOKS_END = "# hooks:start\n", "# hooks:end\n"


def hooks_table() -> str:
    """agent/boot.py's HOOKS and ALIASES, derived from BUILTIN: the agent's start arms its hooks from
    them without importing this module (with the instrumentors package: ~0.4 ms of every start)."""
    def quoted(items) -> str:
        return "(%s%s)" % (", ".join('"%s"' % i for i in items), "," if len(items) == 1 else "")

    rows = []
    for e in BUILTIN.values():
        rows += ['    ("%s", "%s", ""),' % (m, e.name) for m in e.modules]
        rows += ['    ("%s", "%s", "%s"),' % (m, e.name, method) for m, method in e.submodules]
    aliases = ['    "%s": %s,' % (e.name, quoted(e.aliases)) for e in BUILTIN.values() if e.aliases]
    return ("HOOKS = (  # (module, library, method): importing module activates the library's instrumentor,"
            " then calls method\n%s\n)\nALIASES = {  # library -> its other names (OTEL_PYTHON_DISABLED_"
            "INSTRUMENTATIONS)\n%s\n}\n") % ("\n".join(rows), "\n".join(aliases))


def write_hooks(path: str) -> bool:
    """Put hooks_table() between the `# hooks:start/end` lines of `path` (agent/boot.py); True if it changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.find(HOOKS_START), text.find(HOOKS_END)
    if start < 0 or end < start:
        raise ValueError("%s has no %s ... %s lines" % (path, HOOKS_START.strip(), HOOKS_END.strip()))
    new = text[:start + len(HOOKS_START)] + hooks_table() + text[end:]
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


def write_table(path: str) -> bool:
    """Put the libraries table between its markers in `path`; whether the file changed."""
    with open(path, encoding="utf-8") as f:
        before, marked, after = _split(f.read())
    changed = marked != "%s\n%s\n" % (START, markdown_table())
    if changed:
        with open(path, "w", encoding="utf-8") as f:
            f.write("%s%s\n%s\n%s" % (before, START, markdown_table(), after))
    return changed


def main(argv: list) -> int:
    """`python -m trace_run.instrumentors.registry` prints the table; `--write README.md` puts it in place;
    `--write-hooks agent/boot.py` writes boot's table of hooks."""
    from trace_run.core.config import rewrite

    if not argv:
        sys.stdout.write(markdown_table() + "\n")
        return 0
    if argv[0] == "--write-hooks" and len(argv) == 2:
        return rewrite(argv[1], write_hooks, "hooks table")
    if argv[0] == "--write" and len(argv) == 2:
        return rewrite(argv[1], write_table, "libraries table")
    sys.stderr.write("usage: python -m trace_run.instrumentors.registry [--write README.md | "
                     "--write-hooks agent/boot.py]\n")
    return 2


def _split(text: str) -> tuple:
    """(before the start marker, the marked block without the end marker, the end marker and after)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError("no %s ... %s markers" % (START, END))
    return text[:start], text[start:end], text[end:]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

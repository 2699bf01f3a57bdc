"""What trace-bootstrap knows: which installed distributions can be traced, and how.

Data only. Built-in entries are made from instrumentors/registry.py (the one
declaration of each library we trace, whose `supported` range is the one we test).
Third-party entries name the upstream `opentelemetry-instrumentation-<x>`
packages; those of one upstream release share the version of
`opentelemetry-instrumentation` and pin it exactly, so we ask for that same
version (unless `pinned` is False: they version on their own).
`supports` is the range of the library the upstream package declares (its
`instruments` extra) in release RANGES_RELEASE, where we read it; for a newer
release it is not assumed (`-a install` reads the real metadata of what it
would install). Libraries that trace themselves (registry.SELF_TRACED) get no
instrumentor at all: from the release they start at they make their own spans,
before it the built-in instrumentor named `via` traces them.
Distribution names are PEP 503 canonical (lower case, `-`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from trace_run.instrumentors import registry


class BuiltIn(NamedTuple):
    instrumentor: str  # key of registry.BUILTIN
    distributions: Tuple[str, ...]  # installed distributions it traces (empty: standard library)
    label: str = ""  # shown instead of the distribution name (standard library entries)


class ThirdParty(NamedTuple):
    distributions: Tuple[str, ...]  # installed distributions these packages trace
    packages: Tuple[str, ...]  # upstream instrumentation packages to install
    pinned: bool = True  # versioned with opentelemetry-instrumentation
    last: Optional[str] = None  # last upstream release: none exists for a newer opentelemetry-instrumentation
    supports: Optional[str] = None  # the upstream package's `instruments` range in RANGES_RELEASE (None: not read)


class SelfTraced(NamedTuple):
    distribution: str  # installed distribution
    since: str  # first release that makes its own spans
    via: str  # key of registry.BUILTIN tracing the releases before
    package: str  # its upstream instrumentation package, which trace-run never applies


# Made from instrumentors/registry.py, the one declaration of each library we trace.
BUILT_IN: Tuple[BuiltIn, ...] = tuple(
    BuiltIn(e.name, e.distributions, "" if e.distributions else "%s (stdlib)" % (e.stdlib_label or e.name))
    for e in registry.BUILTIN.values()
)

_U = "opentelemetry-instrumentation-"
RANGES_RELEASE = "0.66b2"  # the upstream release whose `instruments` ranges `supports` holds

THIRD_PARTY: Tuple[ThirdParty, ...] = (
    ThirdParty(("sqlalchemy",), (_U + "sqlalchemy",), supports=">=1.0.0,<2.1.0"),
    ThirdParty(("aiohttp",), (_U + "aiohttp-client", _U + "aiohttp-server")),
    ThirdParty(("grpcio",), (_U + "grpc",), supports=">=1.42.0"),
    ThirdParty(("boto3",), (_U + "boto3sqs",)),
    ThirdParty(("botocore",), (_U + "botocore",)),
    ThirdParty(("pymongo",), (_U + "pymongo",)),
    ThirdParty(("mysql-connector-python",), (_U + "mysql",)),
    ThirdParty(("pymysql",), (_U + "pymysql",)),
    ThirdParty(("mysqlclient",), (_U + "mysqlclient",)),
    ThirdParty(("pymssql",), (_U + "pymssql",)),
    ThirdParty(("kafka-python", "kafka-python-ng"), (_U + "kafka-python",)),
    ThirdParty(("confluent-kafka",), (_U + "confluent-kafka",)),
    ThirdParty(("aiokafka",), (_U + "aiokafka",)),
    ThirdParty(("aiopg",), (_U + "aiopg",)),
    ThirdParty(("elasticsearch",), (_U + "elasticsearch",), last="0.64b0"),
    ThirdParty(("tornado",), (_U + "tornado",)),
    ThirdParty(("pyramid",), (_U + "pyramid",)),
    ThirdParty(("falcon",), (_U + "falcon",)),
    ThirdParty(("jinja2",), (_U + "jinja2",), supports=">=2.7,<4.0"),
    ThirdParty(("pymemcache",), (_U + "pymemcache",)),
    ThirdParty(("cassandra-driver", "scylla-driver"), (_U + "cassandra",)),
    ThirdParty(("aio-pika",), (_U + "aio-pika",)),
    ThirdParty(("remoulade",), (_U + "remoulade",)),
    ThirdParty(("tortoise-orm",), (_U + "tortoiseorm",)),
    ThirdParty(("openai",), (_U + "openai-v2",), pinned=False),
)


# Made from instrumentors/registry.py's SELF_TRACED.
SELF_TRACED: Tuple[SelfTraced, ...] = tuple(
    SelfTraced(e.distribution, e.since, e.via, _U + e.name) for e in registry.SELF_TRACED.values()
)


def _index() -> dict:
    out: dict = {}
    for t in THIRD_PARTY:
        for d in t.distributions:
            out[d] = t
    for s in SELF_TRACED:
        out[s.distribution] = s
    for b in BUILT_IN:  # built in wins over a third-party package for the same library
        for d in b.distributions:
            out[d] = b
    return out


BY_DISTRIBUTION: dict = _index()

# trace-run and OpenTelemetry's own distributions: what only they need is not the program's to trace.
AGENT_PREFIXES = ("opentelemetry-",)
AGENT_NAMES = ("trace-run",)

# Upstream packages for a library we trace ourselves: installed, trace-run leaves them unused.
UPSTREAM_FOR_BUILT_IN = {_U + b.instrumentor: b.instrumentor for b in BUILT_IN}
UPSTREAM_FOR_BUILT_IN.update({s.package: s.via for s in SELF_TRACED})

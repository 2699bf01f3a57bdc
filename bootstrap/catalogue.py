"""What trace-bootstrap knows: which installed distributions can be traced, and how.

Data only, in one place. Built-in entries name an instrumentor in
instrumentors/registry.py (whose `supported` range is the one we test); a
test checks every name exists there and every registry entry is listed here.
Third-party entries name the upstream `opentelemetry-instrumentation-<x>`
packages; those of one upstream release share the version of
`opentelemetry-instrumentation` and pin it exactly, so we ask for that same
version (unless `pinned` is False: they version on their own).
Distribution names are PEP 503 canonical (lower case, `-`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple


class BuiltIn(NamedTuple):
    instrumentor: str  # key of registry.BUILTIN
    distributions: Tuple[str, ...]  # installed distributions it traces (empty: standard library)
    label: str = ""  # shown instead of the distribution name (standard library entries)


class ThirdParty(NamedTuple):
    distributions: Tuple[str, ...]  # installed distributions these packages trace
    packages: Tuple[str, ...]  # upstream instrumentation packages to install
    pinned: bool = True  # versioned with opentelemetry-instrumentation
    last: Optional[str] = None  # last upstream release: none exists for a newer opentelemetry-instrumentation


BUILT_IN: Tuple[BuiltIn, ...] = (
    BuiltIn("flask", ("flask",)),
    BuiltIn("requests", ("requests",)),
    BuiltIn("urllib3", ("urllib3",)),
    BuiltIn("urllib", (), "http.client / urllib (stdlib)"),
    BuiltIn("httpx", ("httpx",)),
    BuiltIn("psycopg", ("psycopg",)),
    BuiltIn("psycopg2", ("psycopg2", "psycopg2-binary")),
    BuiltIn("sqlite3", (), "sqlite3 (stdlib)"),
    BuiltIn("redis", ("redis",)),
    BuiltIn("pika", ("pika",)),
    BuiltIn("celery", ("celery",)),
    BuiltIn("threading", (), "threading / concurrent.futures (stdlib)"),
)

_U = "opentelemetry-instrumentation-"

THIRD_PARTY: Tuple[ThirdParty, ...] = (
    ThirdParty(("django",), (_U + "django",)),
    ThirdParty(("fastapi",), (_U + "fastapi",)),
    ThirdParty(("starlette",), (_U + "starlette",)),
    ThirdParty(("sqlalchemy",), (_U + "sqlalchemy",)),
    ThirdParty(("aiohttp",), (_U + "aiohttp-client", _U + "aiohttp-server")),
    ThirdParty(("grpcio",), (_U + "grpc",)),
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
    ThirdParty(("asyncpg",), (_U + "asyncpg",)),
    ThirdParty(("aiopg",), (_U + "aiopg",)),
    ThirdParty(("elasticsearch",), (_U + "elasticsearch",), last="0.64b0"),
    ThirdParty(("tornado",), (_U + "tornado",)),
    ThirdParty(("pyramid",), (_U + "pyramid",)),
    ThirdParty(("falcon",), (_U + "falcon",)),
    ThirdParty(("jinja2",), (_U + "jinja2",)),
    ThirdParty(("pymemcache",), (_U + "pymemcache",)),
    ThirdParty(("cassandra-driver", "scylla-driver"), (_U + "cassandra",)),
    ThirdParty(("aio-pika",), (_U + "aio-pika",)),
    ThirdParty(("remoulade",), (_U + "remoulade",)),
    ThirdParty(("tortoise-orm",), (_U + "tortoiseorm",)),
    ThirdParty(("openai",), (_U + "openai-v2",), pinned=False),
)


def _index() -> dict:
    out: dict = {}
    for t in THIRD_PARTY:
        for d in t.distributions:
            out[d] = t
    for b in BUILT_IN:  # built in wins over a third-party package for the same library
        for d in b.distributions:
            out[d] = b
    return out


BY_DISTRIBUTION: dict = _index()

# Upstream packages for a library we trace ourselves: installed, trace-run leaves them unused.
UPSTREAM_FOR_BUILT_IN = {_U + b.instrumentor: b.instrumentor for b in BUILT_IN}

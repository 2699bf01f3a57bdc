"""trace-bootstrap against real virtualenvs made here, plus the catalogue's consistency.

One virtualenv with pip holds real libraries from the index (requests, jinja2,
opentelemetry-instrumentation 0.66b1) and wheels written here for tiny projects
named like libraries (a `falcon`, a too-new `redis`, an untraceable one, and a
third-party instrumentor declaring the library it instruments). A second one
has no pip. Both are made once for the module. The install test changes the
first one, so it runs last.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from support import BIN, clean_env
from support.wheels import write_wheel
from trace_run.bootstrap import catalogue, coverage
from trace_run.instrumentors import registry

OTEL_VERSION = "0.66b1"  # installed in the venv; upstream packages of that release pin it exactly
JINJA_REQ = "opentelemetry-instrumentation-jinja2==" + OTEL_VERSION
FALCON_REQ = "opentelemetry-instrumentation-falcon==" + OTEL_VERSION

TINY_PROJECTS = {
    # name: (version, extra METADATA lines)
    "falcon": ("99.0.0", ""),
    "redis": ("99.0.0", ""),
    "tr-test-untraceable": ("1.0", ""),
    "tr-test-widgets": ("1.0", ""),
    "tr-test-widgets-instrumentation": (
        "0.1", 'Provides-Extra: instruments\nRequires-Dist: tr-test-widgets>=1; extra == "instruments"\n'),
}
ENTRY_POINTS = {"tr-test-widgets-instrumentation": "[opentelemetry_instrumentor]\nwidgets = tr_test_widgets:W\n"}


def _run(cmd, env=None, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError("%s: exit %d\n%s\n%s" % (cmd, proc.returncode, proc.stdout, proc.stderr))
    return proc


def _build_wheels(root) -> str:
    """Wheels of the tiny projects (no build backend or index needed)."""
    wheels = root / "wheels"
    wheels.mkdir()
    for name, (version, extra) in TINY_PROJECTS.items():
        module = name.replace("-", "_")
        write_wheel(str(wheels), name, version, {module + "/__init__.py": "W = object\n"}, extra,
                    ENTRY_POINTS.get(name, ""))
    return str(wheels)


def _venv_python(venv) -> str:
    return os.path.join(str(venv), "bin", "python")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    return _build_wheels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def libs_venv(tmp_path_factory, wheels):
    """A virtualenv with pip, real libraries from the index and the tiny wheels."""
    venv = tmp_path_factory.mktemp("libs") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = _venv_python(venv)
    _run([py, "-m", "pip", "install", "-q", "requests", "jinja2", "opentelemetry-instrumentation==" + OTEL_VERSION])
    _run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels] + list(TINY_PROJECTS))
    return py


@pytest.fixture(scope="module")
def nopip_venv(tmp_path_factory, wheels):
    """A virtualenv without pip; the tiny `falcon` is put in with the test's own pip."""
    venv = tmp_path_factory.mktemp("nopip") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = _venv_python(venv)
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "--target", site,
          "falcon==99.0.0"])
    return py


def bootstrap(*args, env=None, timeout=600):
    """`python -m trace_run.bootstrap ARGS...` from the test's environment."""
    return subprocess.run([sys.executable, "-m", "trace_run.bootstrap"] + list(args), capture_output=True,
                          text=True, env=env or clean_env(), timeout=timeout)


def report_of(python: str) -> dict:
    proc = bootstrap("--python", python, "--json", "--all")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def rows_by_name(data: dict) -> dict:
    return {(r["distribution"] or r["library"]): r for r in data["libraries"]}


def installed_versions(python: str) -> dict:
    return {r["distribution"]: r["version"] for r in report_of(python)["libraries"] if r["distribution"]}


# ---------------------------------------------------------------- the catalogue


def test_every_built_in_entry_names_a_registry_instrumentor():
    for entry in catalogue.BUILT_IN:
        assert entry.instrumentor in registry.BUILTIN, entry
        target = registry.BUILTIN[entry.instrumentor]
        if target.distribution is not None:
            assert coverage.canonical(target.distribution) in entry.distributions, entry
    listed = {e.instrumentor for e in catalogue.BUILT_IN}
    assert listed == set(registry.BUILTIN), "registry entries missing from the catalogue: %s" % (
        set(registry.BUILTIN) - listed)
    for entry in registry.BUILTIN.values():  # every supported range is a valid specifier
        if entry.distribution is not None:
            assert coverage.in_range("0", entry.supported) is not None, entry.supported
    # the standard library's rows, as the README's trace-bootstrap example shows them
    assert [e.label for e in catalogue.BUILT_IN if e.label] == [
        "http.client / urllib (stdlib)", "sqlite3 (stdlib)", "threading / concurrent.futures (stdlib)"]


def test_third_party_entries_are_upstream_packages_for_libraries_we_do_not_cover():
    built_in = {d for e in catalogue.BUILT_IN for d in e.distributions}
    seen = set()
    for entry in catalogue.THIRD_PARTY:
        for d in entry.distributions:
            assert d == coverage.canonical(d) and d not in built_in and d not in seen, d
            seen.add(d)
        for p in entry.packages:
            assert p.startswith("opentelemetry-instrumentation-") and p == coverage.canonical(p), p
    for name in ("django", "fastapi", "sqlalchemy", "aiohttp", "grpcio", "boto3", "botocore",
                 "pymongo", "mysql-connector-python", "pymysql", "mysqlclient", "kafka-python", "confluent-kafka",
                 "asyncpg", "elasticsearch", "tornado", "pyramid", "falcon", "jinja2", "pymemcache",
                 "cassandra-driver", "aio-pika"):
        assert name in catalogue.BY_DISTRIBUTION, name
    assert "asyncpg" in built_in  # built in since issue 16: no upstream package recommended for it


def test_coverage_rules_on_a_made_up_environment():
    def dist(name, version, **kw):
        return dict(name=name, version=version, **kw)

    detected = {
        "executable": "/x/bin/python", "python_version": "3.11.7", "prefix": "/x", "pip": True,
        "distributions": [
            dist("trace-run", "0.1.0"), dist("opentelemetry-instrumentation", "0.66b2"),
            dist("psycopg2-binary", "2.9.9"), dist("redis", "9.0.0"), dist("Flask", "3.0.0"),
            dist("opentelemetry-instrumentation-flask", "0.66b2", instrumentors=["flask"], instruments=["flask"]),
            dist("elasticsearch", "8.0.0"), dist("openai", "1.0.0"), dist("aiohttp", "3.9.0"),
            dist("opentelemetry-instrumentation-aiohttp-client", "0.66b2", instrumentors=["aiohttp-client"],
                 instruments=[]),
            dist("Django", "5.0"), dist("boto3", "1.0"), dist("leftpad", "1.0"), dist("falcon", "3.1.0"),
            dist("vendor-falcon-instrumentation", "1.0", instrumentors=["falcon"], instruments=["falcon"]),
        ],
    }
    report = coverage.build(detected)
    rows = {r.name or r.library: r for r in report.rows + report.untraceable}
    assert rows["psycopg2-binary"].coverage == coverage.BUILT_IN and rows["psycopg2-binary"].in_range is True
    assert rows["redis"].in_range is False and "outside the tested range" in rows["redis"].detail
    assert "opentelemetry-instrumentation-flask is installed but unused" in rows["flask"].detail
    assert rows["elasticsearch"].coverage == coverage.UNAVAILABLE and not rows["elasticsearch"].requirements
    assert rows["openai"].requirements == ["opentelemetry-instrumentation-openai-v2"]  # versioned on its own
    assert rows["aiohttp"].coverage == coverage.COVERABLE
    assert rows["aiohttp"].covered_by == ["opentelemetry-instrumentation-aiohttp-client 0.66b2"]
    assert rows["aiohttp"].requirements == ["opentelemetry-instrumentation-aiohttp-server==0.66b2"]
    assert rows["leftpad"].coverage == coverage.NONE
    assert rows["falcon"].coverage == coverage.THIRD_PARTY  # a vendor's instrumentor counts
    assert rows["falcon"].covered_by == ["vendor-falcon-instrumentation 1.0"]
    assert rows["sqlite3 (stdlib)"].coverage == coverage.BUILT_IN and report.trace_run == "0.1.0"
    assert rows["django"].coverage == coverage.BUILT_IN and rows["django"].in_range is True  # built in since issue 16
    assert report.requirements == [
        "opentelemetry-instrumentation-aiohttp-server==0.66b2", "opentelemetry-instrumentation-boto3sqs==0.66b2",
        "opentelemetry-instrumentation-openai-v2",
    ]


def test_coverage_rules_for_ranges_self_tracing_and_the_program_s_own_libraries():
    def dist(name, version, requires=(), **kw):
        return dict(name=name, version=version, requires=list(requires), **kw)

    detected = {
        "executable": "/x/bin/python", "python_version": "3.11.7", "prefix": "/x", "pip": True,
        "distributions": [
            dist("trace-run", "0.1.0", ["opentelemetry-exporter-otlp-proto-grpc"]),
            dist("opentelemetry-instrumentation", "0.66b2"),
            dist("opentelemetry-exporter-otlp-proto-grpc", "1.45.2", ["grpcio", "protobuf"]),
            dist("grpcio", "1.85.3"), dist("protobuf", "6.0"),
            dist("pymongo", "4.0", ["dnspython"]), dist("dnspython", "2.0"),  # the program's, asked for by nobody
            dist("boto3", "1.0", requested=True), dist("botocore", "1.0"),
            dist("opentelemetry-exporter-x", "1.0", ["botocore"]),  # botocore: only the agent needs it
            dist("SQLAlchemy", "2.1.9"), dist("fastapi", "0.142.0"),
            dist("pymysql", "1.1.0"),
            dist("opentelemetry-instrumentation-pymysql", "0.66b2", instrumentors=["pymysql"],
                 instruments=["pymysql"], instrument_ranges={"pymysql": "<1"}),
        ],
    }
    rows = {r.name: r for r in coverage.build(detected).rows}
    assert rows["grpcio"].coverage == coverage.AGENT_ONLY and not rows["grpcio"].requirements
    assert rows["botocore"].coverage == coverage.AGENT_ONLY
    assert rows["boto3"].coverage == coverage.COVERABLE  # asked for by name (REQUESTED)
    assert rows["pymongo"].coverage == coverage.COVERABLE
    assert rows["sqlalchemy"].coverage == coverage.UNSUPPORTED
    assert rows["sqlalchemy"].detail.startswith("no upstream instrumentor supports 2.1.9")
    assert rows["fastapi"].coverage == coverage.SELF_TRACED
    assert rows["pymysql"].coverage == coverage.UNSUPPORTED  # the installed instrumentor's range says so
    assert "opentelemetry-instrumentation-pymysql 0.66b2 instruments pymysql<1" in rows["pymysql"].detail
    detected["distributions"][-1]["instrument_ranges"] = {"pymysql": ">=0.9"}
    assert {r.name: r for r in coverage.build(detected).rows}["pymysql"].coverage == coverage.THIRD_PARTY


def test_fastapi_traces_itself_from_its_release_and_gets_trace_runs_starlette_spans_before():
    def report(version, *extra):
        detected = {"executable": "/x/bin/python", "python_version": "3.11.7", "prefix": "/x", "pip": True,
                    "distributions": [dict(name="opentelemetry-instrumentation", version="0.66b2"),
                                      dict(name="fastapi", version=version), dict(name="starlette", version="0.48.0"),
                                      dict(name="asyncpg", version="0.30.0")] + list(extra)}
        return coverage.build(detected)

    (since,) = [e.since for e in catalogue.SELF_TRACED if e.distribution == "fastapi"]
    assert since == registry.SELF_TRACED["fastapi"].since == "0.142.0"  # fastapi.telemetry's first release
    new = report("0.142.0")
    rows = {r.name: r for r in new.rows}
    assert rows["fastapi"].coverage == coverage.SELF_TRACED and not new.requirements
    assert rows["starlette"].coverage == rows["asyncpg"].coverage == coverage.BUILT_IN
    upstream = dict(name="opentelemetry-instrumentation-fastapi", version="0.66b2", instrumentors=["fastapi"],
                    instruments=["fastapi"])
    old = report("0.141.1", upstream)
    row = {r.name: r for r in old.rows}["fastapi"]
    assert row.coverage == coverage.BUILT_IN and row.instrumentor == "starlette" and not old.requirements
    assert row.detail == ("built in (starlette): trace-run's spans until fastapi 0.142.0 traces itself; "
                          "opentelemetry-instrumentation-fastapi is installed but unused")
    assert "fastapi" in registry.COVERED_NAMES  # the agent never applies the upstream one
    assert "| FastAPI (before 0.142.0" in registry.markdown_table()


# ---------------------------------------------------------------- reading environments


def test_table_of_a_virtualenv(libs_venv):
    proc = bootstrap("--python", libs_venv)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "opentelemetry-instrumentation %s; trace-run not installed" % OTEL_VERSION in proc.stdout
    assert "coverable: " + JINJA_REQ in lines["Jinja2"]
    assert "coverable: " + FALCON_REQ in lines["falcon"]
    assert "built in (requests), tested %s" % registry.BUILTIN["requests"].supported in lines["requests"]
    assert "99.0.0 is outside the tested range" in lines["redis"]
    assert "built in (urllib3)" in lines["urllib3"]
    assert "covered by tr-test-widgets-instrumentation 0.1" in lines["tr-test-widgets"]
    assert "tr-test-untraceable" not in lines and "markupsafe" not in proc.stdout.lower()
    assert "cannot be traced (--all lists them)" in proc.stdout
    assert "trace-run is not installed in this environment" in proc.stdout


def test_all_lists_the_untraceable_ones_and_a_venv_folder_is_accepted(libs_venv):
    venv_dir = os.path.dirname(os.path.dirname(libs_venv))
    proc = bootstrap("--python", venv_dir, "--all")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "not traceable" in lines["tr-test-untraceable"] and "not traceable" in lines["MarkupSafe"]


def test_requirements_prints_only_requirement_lines(libs_venv):
    proc = bootstrap("--python", libs_venv, "-a", "requirements")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == sorted([FALCON_REQ, JINJA_REQ])


def test_json_report(libs_venv):
    data = report_of(libs_venv)
    assert data["python"] == libs_venv and data["pip"] is True and data["trace_run"] is None
    assert data["opentelemetry_instrumentation"] == OTEL_VERSION
    assert data["requirements"] == [FALCON_REQ, JINJA_REQ]
    rows = rows_by_name(data)
    assert rows["jinja2"]["coverage"] == "coverable" and rows["jinja2"]["requirements"] == [JINJA_REQ]
    assert rows["redis"]["coverage"] == "built-in" and rows["redis"]["in_range"] is False
    assert rows["redis"]["supported"] == registry.BUILTIN["redis"].supported
    assert rows["requests"]["in_range"] is True and rows["requests"]["instrumentor"] == "requests"
    assert rows["tr-test-widgets"]["coverage"] == "third-party"
    assert rows["tr-test-untraceable"]["coverage"] == "none"


def test_own_environment_with_the_console_script():
    proc = subprocess.run([os.path.join(BIN, "trace-bootstrap")], capture_output=True, text=True, env=clean_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    flask_line = next(line for line in proc.stdout.splitlines() if line.lower().startswith("flask "))
    assert "built in (flask), tested " + registry.BUILTIN["flask"].supported in flask_line
    assert "trace-run 0.1.0" in proc.stdout.splitlines()[0]
    assert "trace-run is not installed" not in proc.stdout


def test_unknown_python_is_a_usage_error(tmp_path):
    proc = bootstrap("--python", str(tmp_path / "nope" / "python"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--python %s: no such interpreter" % (tmp_path / "nope" / "python") in proc.stderr
    not_python = tmp_path / "fake-python"
    not_python.write_text("#!/bin/sh\necho hello\n")
    not_python.chmod(0o755)
    proc = bootstrap("--python", str(not_python))
    assert proc.returncode == 2 and "cannot inspect %s" % not_python in proc.stderr


# ---------------------------------------------------------------- installing


PIP_NO_VERSION = (  # pip 23's words when the index has the package but not that version
    "ERROR: Could not find a version that satisfies the requirement opentelemetry-instrumentation-jinja2==0.66b2 "
    "(from versions: 0.65b0, 0.66b0, 0.66b1)\n"
    "ERROR: No matching distribution found for opentelemetry-instrumentation-jinja2==0.66b2\n")
PIP_CONFLICT = (
    "ERROR: Cannot install x because these package versions have conflicting dependencies.\n"
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/\n")


def test_pip_failures_are_explained():
    from trace_run.bootstrap import install

    reqs = ["opentelemetry-instrumentation-grpc==0.66b2", "opentelemetry-instrumentation-jinja2==0.66b2"]
    failure = install._explain(subprocess.CompletedProcess([], 1, "", PIP_NO_VERSION), reqs, "/v/python", "0.66b2")
    assert "no matching version of: opentelemetry-instrumentation-jinja2==0.66b2 (" in failure.what
    assert "0.66b2 here" in failure.what and any("-m pip install" in line for line in failure.instead)
    failure = install._explain(subprocess.CompletedProcess([], 1, "", PIP_CONFLICT), reqs, "/v/python", "0.66b2")
    assert "never upgrades or downgrades" in failure.what
    assert failure.instead[0] == "see what pip would change: /v/python -m pip install %s --dry-run" % " ".join(reqs)
    failure = install._explain(subprocess.CompletedProcess([], 2, "", "boom"), reqs, "/v/python", None)
    assert failure.what == "pip install failed (exit status 2)"


def _closed_port() -> socket.socket:
    """A bound, never listening socket: connections to it are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def _offline_env(port: int, **extra) -> dict:
    env = {k: v for k, v in clean_env().items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:%d/simple" % port, PIP_RETRIES="1",
               PIP_TIMEOUT="5", **extra)
    return env


def test_install_without_pip_fails_clearly(nopip_venv):
    before = report_of(nopip_venv)
    assert before["pip"] is False
    assert before["requirements"] == ["opentelemetry-instrumentation-falcon"]  # no opentelemetry-instrumentation
    proc = bootstrap("--python", nopip_venv, "-a", "install")
    assert proc.returncode == 1
    assert "install failed: %s has no pip" % nopip_venv in proc.stderr
    assert "%s -m ensurepip" % nopip_venv in proc.stderr and "environment was not changed" in proc.stderr
    assert "[2/4] checking pip" in proc.stderr
    assert report_of(nopip_venv)["libraries"] == before["libraries"]


def test_install_with_the_index_switched_off_fails_and_changes_nothing(libs_venv):
    before = installed_versions(libs_venv)
    with _closed_port() as s:
        env = _offline_env(s.getsockname()[1], PIP_NO_INDEX="1")
        proc = bootstrap("--python", libs_venv, "-a", "install", env=env)
    assert proc.returncode == 1, proc.stderr
    assert "install failed: pip found no release at all of" in proc.stderr
    assert "PIP_NO_INDEX" in proc.stderr and "pip download -d wheels" in proc.stderr
    assert "[3/4] installing 2 package(s) in one pip call" in proc.stderr
    assert installed_versions(libs_venv) == before


def test_install_without_network_fails_and_changes_nothing(libs_venv):
    before = installed_versions(libs_venv)
    with _closed_port() as s:
        proc = bootstrap("--python", libs_venv, "-a", "install", env=_offline_env(s.getsockname()[1]))
    assert proc.returncode == 1, proc.stderr
    assert "pip could not reach the package index" in proc.stderr
    assert "Connection refused" in proc.stderr  # pip's own words are shown
    assert "when the index is reachable: trace-bootstrap --python %s -a install" % libs_venv in proc.stderr
    assert installed_versions(libs_venv) == before


def test_install_succeeds_and_upgrades_nothing(libs_venv, tmp_path):  # last: it changes the venv
    check = subprocess.run([libs_venv, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp_path), JINJA_REQ],
                           capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, "pip cannot get %s from the index: %s" % (JINJA_REQ, check.stderr)
    before = installed_versions(libs_venv)
    proc = bootstrap("--python", libs_venv, "-a", "install")
    assert proc.returncode == 0, proc.stderr
    for n in range(1, 5):
        assert "[%d/4] " % n in proc.stderr
    assert "done: installed %s; no conflicts" % JINJA_REQ in proc.stderr
    # the tiny falcon is 99.0.0: pip's plan shows the real package's instruments range leaves it out
    assert "%s instruments falcon<5.0.0,>=1.4.1, not the installed 99.0.0; going on without it" % FALCON_REQ in (
        proc.stderr)
    assert "    %s: no upstream instrumentor supports falcon 99.0.0" % FALCON_REQ in proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "covered by opentelemetry-instrumentation-jinja2 %s" % OTEL_VERSION in lines["Jinja2"]
    assert "no upstream instrumentor supports 99.0.0 (%s instruments falcon<5.0.0" % FALCON_REQ in lines["falcon"]
    after = installed_versions(libs_venv)
    assert {k: after[k] for k in before} == before  # nothing upgraded or downgraded
    assert after["opentelemetry-instrumentation-jinja2"] == OTEL_VERSION
    assert "opentelemetry-instrumentation-falcon" not in after
    # the catalogue holds no range for falcon: only pip's plan knew; a new -a install asks it again
    assert bootstrap("--python", libs_venv, "-a", "requirements").stdout == FALCON_REQ + "\n"


# ---------------------------------------------------------------- the issue-17 environment
#
# trace-run's own OpenTelemetry packages at 0.66b2 (a release the index has no jinja2 or starlette
# instrumentor of), Flask (brings Jinja2), SQLAlchemy 2.1.9 (the upstream instrumentor declares <2.1),
# FastAPI 0.141.1 (the last release before it traces itself, traced by trace-run's Starlette spans; brings
# starlette), uvicorn, and grpcio
# pulled in only by the OTLP gRPC exporter. The tests below run in this order: install, then upgrade.

ISSUE_OTEL = "0.66b2"
ISSUE_REQ = {name: "opentelemetry-instrumentation-%s==%s" % (name, ISSUE_OTEL)
             for name in ("fastapi", "jinja2", "starlette")}


@pytest.fixture(scope="module")
def issue_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("issue") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = _venv_python(venv)
    _run([py, "-m", "pip", "install", "-q", "opentelemetry-instrumentation==" + ISSUE_OTEL,
          "opentelemetry-exporter-otlp-proto-grpc==1.45.2", "flask", "sqlalchemy==2.1.9", "fastapi==0.141.1",
          "uvicorn"])
    return py


def test_coverage_checks_ranges_and_recommends_only_for_the_program(issue_venv):
    data = report_of(issue_venv)
    rows = rows_by_name(data)
    assert rows["sqlalchemy"]["coverage"] == "unsupported" and not rows["sqlalchemy"]["requirements"]
    assert rows["sqlalchemy"]["detail"].startswith("no upstream instrumentor supports 2.1.9 (")
    assert rows["grpcio"]["coverage"] == "agent-only" and not rows["grpcio"]["requirements"]
    assert "needed only by opentelemetry-exporter-otlp-proto-grpc" in rows["grpcio"]["detail"]
    # 0.141.1 does not trace itself: trace-run's Starlette spans trace it, no upstream package is asked for
    assert rows["fastapi"]["coverage"] == "built-in" and not rows["fastapi"]["requirements"]
    assert rows["fastapi"]["detail"] == "built in (starlette): trace-run's spans until fastapi 0.142.0 traces itself"
    assert rows["starlette"]["coverage"] == "built-in" and not rows["starlette"]["requirements"]
    assert data["requirements"] == [ISSUE_REQ["jinja2"]]


def test_install_installs_what_exists_and_lists_every_missing_package(issue_venv):
    before = installed_versions(issue_venv)
    proc = bootstrap("--python", issue_venv, "-a", "install")
    assert proc.returncode == 0, proc.stderr
    for name in ("jinja2",):  # starlette is built in: no upstream package asked for
        assert "not on the package index: %s (it has " % ISSUE_REQ[name] in proc.stderr, (
            "premise: the index has no %s" % ISSUE_REQ[name], proc.stderr)
    assert "done: nothing could be installed" in proc.stderr
    left = proc.stderr.split("not installed: the package index has no release of these for "
                             "opentelemetry-instrumentation 0.66b2\n", 1)[1].splitlines()
    assert left[0].startswith("    %s (Jinja2 stays untraced): the index has up to 0.66b1." % ISSUE_REQ["jinja2"])
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "no %s on the package index" % ISSUE_REQ["jinja2"] in lines["Jinja2"]
    assert "built in (starlette)" in lines["fastapi"]
    after = installed_versions(issue_venv)
    assert {k: after[k] for k in before} == before  # nothing upgraded or downgraded
    assert bootstrap("--python", issue_venv, "-a", "requirements").stdout.splitlines() == [
        ISSUE_REQ["jinja2"]]


def test_a_library_that_traces_itself_gets_no_instrumentor(issue_venv):
    # fastapi.telemetry appears; an upstream instrumentor installed by hand is never applied by trace-run
    _run([issue_venv, "-m", "pip", "install", "-q", "fastapi==0.142.0", ISSUE_REQ["fastapi"]])
    row = rows_by_name(report_of(issue_venv))["fastapi"]
    assert row["coverage"] == "self-traced" and not row["requirements"]
    assert row["detail"] == ("traces itself (since fastapi 0.142.0): no instrumentor needed; "
                             "opentelemetry-instrumentation-fastapi is installed but unused")
    _run([issue_venv, "-m", "pip", "uninstall", "-q", "-y", "opentelemetry-instrumentation-fastapi"])
    data = report_of(issue_venv)
    assert rows_by_name(data)["fastapi"]["detail"] == "traces itself (since fastapi 0.142.0): no instrumentor needed"
    assert data["requirements"] == [ISSUE_REQ["jinja2"]]

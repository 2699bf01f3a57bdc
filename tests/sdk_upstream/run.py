"""Run the OpenTelemetry SDK's own span tests against the SDK's span class and against trace-run's.

    python tests/sdk_upstream/run.py [pytest args...]

Takes the tests from the sdist of the installed opentelemetry-sdk (pip download; nothing of
them is kept in this repository), runs tests/trace twice (bare, then with adapter.py putting
trace-run's span class and tracer in the SDK's place) and prints both counts and every test
whose outcome differs. Needs opentelemetry-test-utils of the same release (the tests import
it); the script says which to install when it is missing. Local only: not part of CI.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))


def _sdk_tests(work: str) -> str:
    from importlib.metadata import version

    sdk = version("opentelemetry-sdk")
    res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                          "opentelemetry-sdk==" + sdk, "-d", work], capture_output=True, text=True)
    archives = glob.glob(os.path.join(work, "opentelemetry_sdk-*.tar.gz"))
    if res.returncode != 0 or not archives:
        raise SystemExit("run.py: the sdist of opentelemetry-sdk %s could not be had (%s); nothing was run"
                         % (sdk, res.stderr.strip().splitlines()[-1:] or "no archive"))
    with tarfile.open(archives[0]) as tar:
        tar.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(work)
    tests = glob.glob(os.path.join(work, "opentelemetry_sdk-*", "tests"))
    if not tests:
        raise SystemExit("run.py: the sdist of opentelemetry-sdk %s carries no tests/; nothing was run" % sdk)
    return tests[0]


def _outcomes(junit: str) -> dict:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("classname", "") + "::" + case.get("name", "")
        kinds = [child.tag for child in case]
        out[name] = ("failed" if "failure" in kinds or "error" in kinds
                     else "skipped" if "skipped" in kinds else "passed")
    return out


def _run(tests: str, work: str, label: str, extra: list, args: list) -> dict:
    junit = os.path.join(work, label + ".xml")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", tests,
                    "--junitxml", junit, *extra, *args, os.path.join(tests, "trace")], cwd=work, env=env,
                   stdout=subprocess.DEVNULL)
    return _outcomes(junit)


def main(args: list) -> int:
    try:
        import opentelemetry.test  # noqa: F401
    except ImportError:
        from importlib.metadata import version

        print("run.py: the SDK's tests need opentelemetry-test-utils: pip install 'opentelemetry-test-utils==%s'"
              % version("opentelemetry-instrumentation"))
        return 2
    work = tempfile.mkdtemp(prefix="sdk-upstream-")
    tests = _sdk_tests(work)
    sdk = _run(tests, work, "sdk", [], args)
    ours = _run(tests, work, "trace-run", ["-p", "adapter"], args)
    for label, res in (("SDK's span class", sdk), ("trace-run's span class", ours)):
        counts = {k: sum(1 for v in res.values() if v == k) for k in ("passed", "failed", "skipped")}
        print("%-24s %d passed, %d failed, %d skipped"
              % (label, counts["passed"], counts["failed"], counts["skipped"]))
    differ = sorted(n for n in set(sdk) | set(ours) if sdk.get(n) != ours.get(n))
    for name in differ:
        print("  differs: %s: SDK %s, trace-run %s" % (name, sdk.get(name), ours.get(name)))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

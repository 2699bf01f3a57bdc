"""`trace-run [options] CMD ARGS...`: run CMD with the agent injected.

Puts the injection folder (holding only sitecustomize.py) first on
PYTHONPATH, keeps what was there, and execs CMD. scripts/trace-run does the
same itself, without starting Python, where it finds trace-run installed
beside it; this is its fallback (options, `view`, errors, other layouts), and
the two must give the same results. No argparse: it imports as little as possible.
"""

import os
import sys

from trace_run.core.version import VERSION

USAGE = """usage: trace-run [--info] [--help] [--version] COMMAND [ARGS...]
       trace-run view [--help] [options]   (a local trace viewer: see trace-run view --help)

Run COMMAND (python app.py, python -m pkg, gunicorn app:app, flask run,
celery -A tasks worker, ...) with OpenTelemetry tracing, unchanged.

options:
  --info        print the resolved configuration (alone), or print it on
                stderr from inside COMMAND as it starts
  -h, --help    show this help and exit
  --version     show the version and exit

Configuration is read from OTEL_* environment variables; see README.md.
"""


def inject_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "inject")


def which(command: str):
    """shutil.which without importing shutil (~10 ms on every launch)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def build_env(environ: dict) -> dict:
    env = dict(environ)
    here = inject_dir()
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    parts = [p for p in parts if os.path.realpath(p) != os.path.realpath(here)]
    env["PYTHONPATH"] = os.pathsep.join([here] + parts)
    return env


def _is_python_file(path: str) -> bool:
    return path.endswith((".py", ".pyw")) and os.path.isfile(path)


def _python_hint(command: str, what: str) -> str:
    # `trace-run app.py` is a common first try; the shell would say only "Permission denied".
    return ("trace-run: cannot run %s: it is a Python file, %s; run it with: trace-run python %s\n"
            % (command, what, command))


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["view"]:  # the local viewer: its own program, run here without the agent
        from trace_run.viewer.cli import main as view

        return view(args[1:])
    info = False
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if opt == "--version":
            sys.stdout.write("trace-run %s\n" % VERSION)
            return 0
        if opt == "--info":
            info = True
            continue
        if opt == "--":
            break
        sys.stderr.write("trace-run: unknown option: %s\n%s" % (opt, USAGE))
        return 2
    if not args:
        if info:
            from . import info as info_module

            info_module.print_info(sys.stdout)
            return 0
        sys.stderr.write(USAGE)
        return 2
    command = args[0]
    path = command if os.sep in command else which(command)
    if not path or not os.path.exists(path):
        if _is_python_file(command):
            sys.stderr.write(_python_hint(command, "not a command on PATH"))
        else:
            sys.stderr.write("trace-run: command not found: %s\n" % command)
        return 127
    env = build_env(os.environ)
    # The command, not its descendants, says so if the agent cannot start in it (see config's registry).
    env["OTEL_TRACE_RUN_LAUNCHED"] = "true"
    if info:
        env["OTEL_TRACE_RUN_INFO"] = "true"
    try:
        os.execve(path, args, env)
    except OSError as exc:
        if _is_python_file(path):
            sys.stderr.write(_python_hint(command, "not an executable command"))
        else:
            sys.stderr.write("trace-run: cannot run %s: %s\n" % (command, exc.strerror or exc))
        return 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

"""sample_apps/hello.py, the README quick start: it runs, exits on its own, and its traces
(and the console output shown in the README) are what the README says."""

from __future__ import annotations

import os
import re

from support import clean_env, python, run_traced

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = os.path.join(ROOT, "sample_apps", "hello.py")
TREE_LINE = re.compile(r"^\s*\|[ #]+\| (?P<indent> *)(?P<name>\S.*?)\s+"
                       r"(?P<kind>SERVER|CLIENT|INTERNAL|PRODUCER|CONSUMER)\s+"
                       r"[\d.]+ ms\s+(?P<status>ok|ERROR)\s+(?P<attrs>.*)$")
HEADER = re.compile(r"^trace [0-9a-f]{32}  service=(\S+)(  \(continues remote parent [0-9a-f]{16}\))?$")


def test_hello_traces_client_server_client_server(receiver):
    proc = run_traced([python(), HELLO], env=clean_env(**receiver.env()), timeout=60, check=True)
    assert proc.stdout.splitlines() == ["Hello, world!", "Hello, trace-run!"]
    spans = receiver.wait_for(count=8, timeout=10)
    traces = receiver.traces()
    assert len(spans) == 8 and len(traces) == 2, spans
    for trace in traces.values():
        ids = {s.span_id: s for s in trace}
        roots = [s for s in trace if s.parent_id is None]
        assert len(roots) == 1, trace
        assert all(s.parent_id is None or s.parent_id in ids for s in trace), "orphan span in %s" % trace
        # The chain: CLIENT GET (the main thread) -> SERVER /hello -> CLIENT GET -> SERVER /greeting.
        chain = [roots[0]]
        while True:
            kids = [s for s in trace if s.parent_id == chain[-1].span_id]
            if not kids:
                break
            assert len(kids) == 1, kids
            chain.append(kids[0])
        assert [(s.kind, s.name) for s in chain] == [
            ("CLIENT", "GET"), ("SERVER", "GET /hello/<name>"), ("CLIENT", "GET"), ("SERVER", "GET /greeting/<name>")]
        assert chain[1].attributes["http.route"] == "/hello/<name>"
        name = chain[0].attributes["url.full"].rsplit("/", 1)[1]
        assert chain[2].attributes["url.full"].endswith("/greeting/" + name)
        assert all(s.status == "UNSET" and s.attributes["http.response.status_code"] == 200 for s in chain)
        assert all(s.service == "unknown_service:hello.py" for s in chain)


def _readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```[a-z]*\n(.*?)```", quick, re.S)
    trees = [b for b in blocks if b.startswith("trace ")]
    assert len(trees) == 1, "the README quick start has no console output example"
    return trees[0]


def _pieces(lines: list) -> list:
    """The printed trees as (service, continues a remote parent?, ((depth, name, kind, status), ...))."""
    pieces, current = [], None
    for line in lines:
        header, tree = HEADER.match(line), TREE_LINE.match(line)
        if header:
            current = (header.group(1), bool(header.group(2)), [])
            pieces.append(current)
        elif tree and current is not None:
            current[2].append((len(tree["indent"]) // 2, tree["name"], tree["kind"], tree["status"]))
    return [(service, remote, tuple(rows)) for service, remote, rows in pieces]


_VARYING = [(re.compile(r"\b[0-9a-f]{32}\b"), "TRACE"), (re.compile(r"\b[0-9a-f]{16}\b"), "SPAN"),
            (re.compile(r" +\d+\.\d+ ms"), " N ms"), (re.compile(r"(127\.0\.0\.1:|server\.port=)\d+"), r"\1PORT"),
            (re.compile(r"^  \|[ #]+\|"), "  |BAR|")]


def _normalized(line: str) -> str:
    for pattern, replacement in _VARYING:
        line = pattern.sub(replacement, line)
    return line


def test_hello_docstring_says_what_it_prints():
    with open(HELLO) as f:
        doc = f.read().split('"""')[1]
    proc = run_traced([python(), HELLO], env=clean_env(OTEL_TRACES_EXPORTER="console"), timeout=60, check=True)
    pieces = _pieces(proc.stdout.splitlines())
    assert "two traces, one per request, each in three parts" in doc and "Six trees in all" in doc
    assert len(pieces) == 6 and len({line.split()[1] for line in proc.stdout.splitlines()
                                     if line.startswith("trace ")}) == 2
    assert sum(remote for _, remote, _ in pieces) == 4  # the two SERVER parts of each request


def test_readme_quick_start_output_is_what_hello_prints():
    env = clean_env(OTEL_TRACES_EXPORTER="console")
    proc = run_traced([python(), HELLO], env=env, timeout=60, check=True)
    assert proc.stderr == ""
    real = proc.stdout.splitlines()
    real_pieces = _pieces(real)
    assert len(real_pieces) == 6, proc.stdout  # 2 traces, 3 local pieces each

    example = _readme_example().splitlines()
    for line in example:  # every line is something hello.py prints
        if line in real:  # the program's own output
            continue
        header, tree = HEADER.match(line), TREE_LINE.match(line)
        assert header or tree, "README example line matches nothing hello.py prints: %r" % line
        if tree:
            for attr in re.findall(r"([a-z.]+)=", tree["attrs"]):
                assert any(attr + "=" in r for r in real), "attribute %s not in the real output" % attr
    # verbatim but for ids, durations, ports and bars: no invented `...`, nothing reordered within a part
    assert set(map(_normalized, example)) <= set(map(_normalized, real)), [
        line for line in example if _normalized(line) not in set(map(_normalized, real))]
    example_pieces = _pieces(example)
    assert len(example_pieces) == 3, "the example shows one request: three trees"
    for piece in example_pieces:  # every tree, with its shape, is one hello.py prints
        assert piece in real_pieces, "README tree %s not among the real ones %s" % (piece, real_pieces)

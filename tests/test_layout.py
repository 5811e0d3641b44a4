"""The code's shape, checked: what the plug-in contract and the module split promise stays true as code is added.

- an algorithm's options are named only under zoft/algos/ (everything else reaches them through the registry);
- no zoft module imports, directly or through others, a module that imports it back;
- no function in zoft/ is longer than 80 lines;
- every citation of a document in the code, tests, benchmarks and README names a file the repository ships.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from zoft.algos import ALGORITHMS, option_table

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zoft"
#: the names the plug-in issue listed; `rank`, `momentum` (plain words) are left to the registry check below
ALGORITHM_ONLY = {"hessian_smooth", "hessian_schedule", "hessian_estimator", "allow_degenerate", "beta2", "adam_eps",
                  "rank_mode", "rank_threshold", "rank_min", "rank_max", "tezo_scale", "tezo_factors"}


def _sources(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_algorithm_options_are_named_only_under_zoft_algos():
    names = ALGORITHM_ONLY | {name for name in option_table() if "_" in name}
    pattern = re.compile(r"\b(" + "|".join(sorted(names)) + r")\b")
    outside = []
    for path in _sources(PACKAGE):
        if PACKAGE / "algos" in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                outside.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not outside, "algorithm options named outside zoft/algos/:\n" + "\n".join(outside)


def test_every_option_is_declared_by_an_algorithm_of_the_registry():
    declared = {o.name for cls in ALGORITHMS.values() for o in cls.options}
    assert set(option_table()) == declared
    assert ALGORITHM_ONLY <= declared  # the list above is not stale


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _sources(PACKAGE)}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions count: a lazy cycle is one
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zoft":
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                # a package and its own submodules import each other by design (re-exports)
                if target in modules and not (target.startswith(name + ".") or name.startswith(target + ".")):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycles():
    graph = _import_graph()
    assert "zoft.encoding" in graph["zoft.generate"]  # the walk sees imports (a vacuous graph would pass)
    assert not _cycles(graph), "\n".join(" -> ".join(c) for c in _cycles(graph))


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_function_in_zoft_is_longer_than_80_lines():
    long = []
    for path in _sources(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "\n".join(long)


def test_cited_documents_ship_with_the_repository():
    """A cited document (under docs/, or a capitalised document name such as a
    specification's) must be in the repository,
    and the package and README must not send users to `../shared`, which only the developers' checkout has (tests
    and benchmarks may read task data from there)."""
    cited = re.compile(r"((?:\.\./)?(?:[\w.-]+/)*(?:[A-Z][A-Z_]+|docs/[\w./-]+)\.md)\b")
    missing = []
    for path in [*_sources(PACKAGE), *_sources(ROOT / "tests"), *_sources(ROOT / "bench"), ROOT / "README.md"]:
        user_facing = path.name == "README.md" or PACKAGE in path.parents
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in cited.findall(line):
                if name.startswith("../") or not ((ROOT / name).exists() or (path.parent / name).exists()):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
            if user_facing and "shared/" in line:
                missing.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not missing, "citations of files the repository does not ship:\n" + "\n".join(missing[:40])

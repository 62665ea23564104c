"""The house rules, checked on the source: the import layers that `docs/architecture.md` states,
no import cycle, library imports at the top of files, and public names without shape suffixes.

When a test here fails, either the change broke a rule (move the code to the layer it belongs to)
or the rule itself changed: then change `docs/architecture.md` first, and this test follows it.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "alignment"
ABOVE_THE_LIBRARY = ("experiments", "configs", "tests", "notebooks")
HEAVY = "# optional heavy dependency"
SHAPE_SUFFIX = re.compile(r"_[A-Z]\d*(x[A-Z]\d*)*$")  # logps_BxT, rewards_GxK, lengths_B


def layers_from_docs() -> dict[str, int]:
    """{unit: level} from the fenced block under `## Layers` in docs/architecture.md, whose lines
    read `L<n>: alignment.a, alignment.b`."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)
    assert len(section) == 2, "docs/architecture.md has no '## Layers' section"
    block = re.search(r"```[a-z]*\n(.*?)```", section[1], re.S)
    assert block, "the '## Layers' section of docs/architecture.md has no fenced block"
    levels = {}
    for line in block.group(1).splitlines():
        m = re.match(r"\s*L(\d+):\s*(.+)$", line)
        if m:
            for unit in m.group(2).split(","):
                levels[unit.strip()] = int(m.group(1))
    assert levels, "no 'L<n>: unit, ...' line in the layers block of docs/architecture.md"
    return levels


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imported_modules(node: ast.AST, known: set[str]) -> list[str]:
    """The modules an import statement loads (`from alignment.x import y` is `alignment.x.y`
    when that is a module, else `alignment.x`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return subs or [node.module]
    return []


def import_nodes(tree: ast.Module):
    """(import node, inside a function?) for every import of a module."""

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(
                child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            )

    yield from walk(tree, False)


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    known = set(mods)
    edges, inner, upward = {}, [], []
    for name, path in mods.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, filename=str(path))
        edges[name] = set()
        for node, in_function in import_nodes(tree):
            # the one allowed exception, marked on its line: a module that loads a heavy optional
            # dependency (tensorflow_datasets, reasoning_gym) is imported where it is needed
            heavy = HEAVY in lines[node.lineno - 1]
            for target in imported_modules(node, known):
                root = target.split(".")[0]
                if root in ABOVE_THE_LIBRARY:
                    upward.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
                if root != "alignment":
                    continue
                if in_function and not heavy:
                    inner.append(
                        f"{path.relative_to(REPO)}:{node.lineno} imports {target} inside a function"
                    )
                elif target != name:
                    edges[name].add(target)
    return {"modules": mods, "edges": edges, "inner": inner, "upward": upward}


def test_layers_as_docs_state_them(graph):
    levels = layers_from_docs()
    missing = sorted({unit_of(m) for m in graph["modules"]} - set(levels) - {"alignment"})
    assert not missing, f"units not placed in a layer of docs/architecture.md: {missing}"
    violations = []
    for src, targets in graph["edges"].items():
        if src == "alignment":
            continue
        for dst in targets:
            if dst == "alignment" or unit_of(dst) == unit_of(src):
                continue
            if levels[unit_of(dst)] >= levels[unit_of(src)]:
                violations.append(
                    f"{src} (L{levels[unit_of(src)]}) imports {dst} (L{levels[unit_of(dst)]})"
                )
    assert not violations, "imports must go only downward:\n" + "\n".join(sorted(violations))


def test_engine_imports_no_learner(graph):
    bad = [
        f"{s} -> {d}"
        for s, ts in graph["edges"].items()
        if unit_of(s) == "alignment.engine"
        for d in ts
        if unit_of(d) == "alignment.learners"
    ]
    assert not bad, bad


def test_no_import_cycle(graph):
    edges = graph["edges"]
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_library_imports_sit_at_the_top_and_never_reach_above(graph):
    assert not graph["inner"], "\n".join(graph["inner"])
    assert not graph["upward"], "library code imports experiments/configs:\n" + "\n".join(
        graph["upward"]
    )


def public_parameters(tree: ast.Module):
    """(qualified name, parameter or field) of module-level functions, methods of module-level
    classes and annotated class fields; names starting with `_` (dunders aside) are private."""

    def public(name):
        return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))

    def args(fn):
        a = fn.args
        return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and public(node.name):
            yield from ((node.name, a) for a in args(node))
        if isinstance(node, ast.ClassDef) and public(node.name):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and public(item.name):
                    yield from ((f"{node.name}.{item.name}", a) for a in args(item))
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    yield f"{node.name} (field)", item.target.id


def test_public_names_carry_no_shape_suffix(graph):
    bad = []
    for name, path in graph["modules"].items():
        for where, param in public_parameters(ast.parse(path.read_text())):
            if SHAPE_SUFFIX.search(param):
                bad.append(f"{path.relative_to(REPO)}: {where}({param})")
    assert not bad, "shape suffixes belong on local variables, not public names:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_claim(tmp_path):
    """The detectors themselves, on made-up source."""
    tree = ast.parse(
        "def f(x_BxT, y):\n    import alignment.models\n\nclass C:\n    tokens_BxN: int\n"
    )
    assert [p for _, p in public_parameters(tree) if SHAPE_SUFFIX.search(p)] == [
        "x_BxT",
        "tokens_BxN",
    ]
    assert [inside for _, inside in import_nodes(tree)] == [True]
    assert not SHAPE_SUFFIX.search("input_ids") and not SHAPE_SUFFIX.search("ref_logps")

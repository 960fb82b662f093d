"""The house rules a newcomer relies on: short modules, no import circle, notebooks without globals()."""

import ast
import json

from workshop_lib.paths import REPO_ROOT

LIB = REPO_ROOT / "workshop_lib"
MAX_LINES = 400


def _module_name(path):
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """{module: set of workshop_lib modules it imports}, at any depth (a function-level import is an edge
    too: it only hides a circle from Python, not from a reader)."""
    modules = {_module_name(p): p for p in LIB.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                if c in modules and c != name:
                    edges.add(c)
                    break
        graph[name] = edges
    return graph


def _cycle(graph):
    """One import circle as a list of modules, or None (a package's __init__ re-exporting its own
    submodules is not a circle: the package and its parts are one unit for this)."""

    def unit(m):
        return m if m.count(".") < 2 else ".".join(m.split(".")[:2])

    units = {}
    for m, targets in graph.items():
        units.setdefault(unit(m), set()).update(unit(t) for t in targets if unit(t) != unit(m))
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(units.get(u, ())):
            if state.get(v) == "open":
                return stack[stack.index(v) :] + [v]
            if v not in state and (found := visit(v)):
                return found
        state[u] = "done"
        stack.pop()
        return None

    for u in sorted(units):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_no_module_is_longer_than_400_lines():
    long = {
        str(p.relative_to(REPO_ROOT)): n
        for p in LIB.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by their jobs (at most {MAX_LINES} lines a module): {long}"


def test_no_import_circle():
    graph = _imports()
    assert sum(len(v) for v in graph.values()) > 50  # the walk found the kit's imports (it can fail)
    circle = _cycle(graph)
    assert circle is None, " -> ".join(circle)


def test_the_circle_finder_finds_a_circle():
    graph = {"workshop_lib.a": {"workshop_lib.b"}, "workshop_lib.b": {"workshop_lib.a"}}
    assert _cycle(graph) == ["workshop_lib.a", "workshop_lib.b", "workshop_lib.a"]


def test_notebooks_read_their_parameters_without_globals():
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            assert "globals()" not in "".join(cell["source"]), f"{path.name}: a cell uses globals()"

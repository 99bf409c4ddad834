"""The layout keeps its shape: imports point down the layers (LAYERS, the one place their order
is written), no import cycle among mkv's modules (function-level imports count too), the two
faces never import each other, only the command line uses the client, no module grows past
~500 lines, and the top of mkv/ keeps the contracts, the store and the wiring."""

import ast
from pathlib import Path

MKV = Path(__file__).resolve().parents[1] / "mkv"
MAX_LINES = 520
MAX_TOP_MODULES = 14  # the top of mkv/; what serves operators or talks to volumes has a folder

# The layers, lowest first: a module may import its own layer and those below, never above.
# The most specific prefix decides a module's layer. The offline commands (ops) sit beside the
# store and below the faces, so they never load one; the client (for programs) sits beside the
# contracts and talks to masters over HTTP only.
LAYERS: list[tuple[str, ...]] = [
    ("mkv.placement", "mkv.record", "mkv.config", "mkv.tasks", "mkv.metrics"),  # contracts
    ("mkv.client",),  # for programs: the contracts and nothing else of the master's
    ("mkv.http",),
    ("mkv.admin.endpoint", "mkv.admin.status_page"),  # the admin port's parts, face-free
    ("mkv.index", "mkv.volumes"),
    ("mkv.locks", "mkv.store"),
    ("mkv.ops",),
    ("mkv.native", "mkv.s3"),  # the faces
    ("mkv.master", "mkv.supervisor", "mkv.admin"),
    ("mkv.cli", "mkv.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(MKV.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The mkv modules `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in MKV.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return trail[trail.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(edges[node]):
            cycle = visit(target, trail + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for node in sorted(edges):
        cycle = visit(node, [])
        if cycle:
            return cycle
    return None


def reaches(edges: dict[str, set[str]], start: str, prefix: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for target in edges[node] - seen:
            if target.startswith(prefix):
                return True
            seen.add(target)
            todo.append(target)
    return False


def layer_of(module: str) -> int:
    """The layer of `module`: the one whose most specific prefix names it."""
    best, found = "", -1
    for n, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, found = prefix, n
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports against the layer order, as `a → b` lines."""
    return sorted(f"{a} → {b}" for a, targets in edges.items() for b in targets
                  if layer_of(b) > layer_of(a))


def test_every_module_has_a_layer():
    assert [m for m in graph() if m != "mkv" and layer_of(m) < 0] == []


def test_imports_point_down_the_layers():
    assert upward(graph()) == []


def test_upward_finds_an_import_against_the_order():
    edges = {"mkv.store": {"mkv.s3.face", "mkv.index.base"}, "mkv.s3.face": {"mkv.store"},
             "mkv.http.server": {"mkv.index.base"}}
    assert upward(edges) == ["mkv.http.server → mkv.index.base", "mkv.store → mkv.s3.face"]


def test_only_the_command_line_uses_the_client():
    users = {a for a, targets in graph().items()
             if not a.startswith("mkv.client") and any(t.startswith("mkv.client") for t in targets)}
    assert users <= {"mkv.cli"}


def test_the_top_of_mkv_is_small():
    top = [p.stem for p in MKV.glob("*.py") if not p.stem.startswith("__")]
    assert len(top) <= MAX_TOP_MODULES, sorted(top)


def test_no_import_cycle():
    assert find_cycle(graph()) is None, " → ".join(find_cycle(graph()) or [])


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_faces_do_not_import_each_other():
    edges = graph()
    assert not reaches(edges, "mkv.native", "mkv.s3")
    s3 = [name for name in edges if name.startswith("mkv.s3")]
    assert not any(reaches(edges, name, "mkv.native") for name in s3)
    for face in ("mkv.s3", "mkv.native"):
        assert not reaches(edges, "mkv.store", face)


def test_no_module_is_too_long():
    long = {module_name(p): n for p in MKV.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}

"""The layout keeps its shape: no import cycle among mkv's modules (function-level imports
count too), the two faces never import each other, and no module grows past ~500 lines."""

import ast
from pathlib import Path

MKV = Path(__file__).resolve().parents[1] / "mkv"
MAX_LINES = 520


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

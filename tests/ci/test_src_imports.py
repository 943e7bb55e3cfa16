"""Every import in src/ points one way: no module reaches, through any chain of `crate::` and
`super::` paths, back to itself (src/README.md, "Layers"). One node per file module (`db`,
`db::error`, `routes::users`, ...); a `mod x;` declaration is not an edge, a path that names
another module's item is. lib.rs (the root that wires everything) and main.rs (another crate)
are left out."""

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"



def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.rs"):
        relative = path.relative_to(SRC).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "mod":
            parts.pop()
        if parts in (["lib"], ["main"]):
            continue
        found["::".join(parts)] = path
    return found


def code_of(path: Path) -> str:
    """The file without comments, string literals and its `#[cfg(test)]` module (tests may
    reach anywhere)."""
    text = path.read_text()
    text = text.split("#[cfg(test)]\nmod tests", 1)[0]
    text = re.sub(r'r#*"(?:.|\n)*?"#*|"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def targets(module: str, code: str, known: set[str]) -> set[str]:
    """The modules this code names, resolved to the longest known module path."""
    names = set()
    for match in re.finditer(r"\b(crate|super)::(\{[^}]*\}|[\w:]+)", code):
        root, rest = match.groups()
        base = [] if root == "crate" else module.split("::")[:-1]
        if rest.startswith("{"):
            tails = [t.strip() for t in rest[1:-1].split(",") if t.strip()]
        else:
            tails = [rest]
        for tail in tails:
            parts = base + [p for p in re.split(r"::", tail) if p and p != "{"]
            for end in range(len(parts), 0, -1):
                candidate = "::".join(parts[:end])
                if candidate in known:
                    names.add(candidate)
                    break
    # A child module named without a prefix (`use error::DbError;` in db/mod.rs).
    for child in (k for k in known if k.startswith(module + "::") and k.count("::") == module.count("::") + 1):
        if re.search(rf"(?<![\w:]){re.escape(child.rsplit('::', 1)[1])}::", code):
            names.add(child)
    names.discard(module)
    return names


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: targets(m, code_of(p), set(found)) for m, p in found.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_from_the_files():
    """Guards the test itself: edges everyone can see in the code are found."""
    edges = graph()
    assert {"db", "domain", "error", "routes::users"} <= edges["routes::users"] | {"routes::users"}
    assert "error_code" in edges["domain"] and "db::error" in edges["db::metrics"]
    assert "db" in edges["db::users"], "a `super::` path is an edge"
    assert "db::error" in edges["db"], "a child named without a prefix is an edge"


def test_no_import_circle():
    found = cycle(graph())
    assert found is None, "an import circle: " + " -> ".join(found)


@pytest.mark.parametrize("leaf", ["error_code", "log"])
def test_leaves_import_no_module_of_the_crate(leaf):
    assert graph()[leaf] == set(), f"{leaf} is imported by the layers and must stay a leaf"


def test_the_circle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None

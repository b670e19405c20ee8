"""Every named SQL block is used by the package, and every block the package asks for exists."""

from __future__ import annotations

import ast
import importlib.resources
import re
from pathlib import Path

import argus_embedder
from argus_embedder import db

PACKAGE = Path(argus_embedder.__file__).parent


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(PACKAGE.rglob("*.py"))]


def _is_queries_call(node: ast.AST) -> bool:
    """`db.queries()` or `queries()`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "queries") or (
        isinstance(func, ast.Name) and func.id == "queries"
    )


def _asked_for() -> dict[str, str]:
    """Block names the package looks up literally: `db.queries()["x"]` or `q["x"]` where
    `q = db.queries()` in the same module. Maps each name to where it is asked for."""
    asked: dict[str, str] = {}
    for path, tree in _sources():
        holders = {
            target.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and _is_queries_call(node.value)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Subscript):
                continue
            value = node.value
            on_queries = _is_queries_call(value) or (
                isinstance(value, ast.Name) and value.id in holders
            )
            key = node.slice
            if on_queries and isinstance(key, ast.Constant) and isinstance(key.value, str):
                asked[key.value] = f"{path.relative_to(PACKAGE)}:{node.lineno}"
    return asked


def _string_constants() -> set[str]:
    return {
        node.value
        for _, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_every_block_the_code_asks_for_exists() -> None:
    names = set(db.queries().names())
    missing = {name: where for name, where in _asked_for().items() if name not in names}
    assert not missing, f"SQL blocks asked for but not defined: {missing}"


def test_every_block_is_used_by_the_code() -> None:
    # A block is used when its name appears in the package as a string: most are
    # looked up literally, some through a variable holding one of two literals.
    strings = _string_constants()
    unused = sorted(name for name in db.queries().names() if name not in strings)
    assert not unused, f"SQL blocks no code uses: {unused}"


def test_the_lookup_finder_sees_the_usual_forms() -> None:
    asked = _asked_for()
    assert "claim_jobs" in asked  # db.queries()["claim_jobs"]
    assert "pass_claim" in asked  # q = db.queries(); q["pass_claim"]


GATEWAYS = {  # sql/queries/<file> -> the one module that writes its table
    "jobs.sql": "gateways/queue.py",
    "frames.sql": "gateways/frames.py",
    "embeddings.sql": "gateways/store.py",
    "models.sql": "gateways/index.py",
    "passes.sql": "gateways/passes.py",
    "workers.sql": "gateways/workers.py",
    "projects.sql": "gateways/projects.py",
}
_WRITES = re.compile(
    r"\b(INSERT|UPDATE|DELETE|COPY)\b|argus\.(register_model|ensure_model_index|ensure_segments"
    r"|drop_model|enqueue_embedding_job)\b"
)


def _blocks_of(file_name: str) -> dict[str, str]:
    text = (
        importlib.resources.files("argus_embedder.sql").joinpath("queries", file_name).read_text()
    )
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_each_table_is_written_through_its_one_gateway() -> None:
    """Every statement that writes a gateway's table is asked for from that module only."""
    asked_from: dict[str, set[str]] = {}
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                asked_from.setdefault(node.value, set()).add(str(path.relative_to(PACKAGE)))
    strays = {}
    for file_name, module in GATEWAYS.items():
        for name, body in _blocks_of(file_name).items():
            sql = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
            if _WRITES.search(sql) and asked_from.get(name, set()) - {module}:
                strays[name] = sorted(asked_from[name])
    assert not strays, f"writes outside their gateway: {strays}"

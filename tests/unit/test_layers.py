"""The package's dependency direction (DESIGN §1): cli → commands → {pipeline, services,
runtime} → gateways → db, settings, errors; the daemon never imports bench, testing or
commands; gateways never import torch; fetch and decode never touch the database."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import argus_embedder

PACKAGE = Path(argus_embedder.__file__).parent
# Leaves: they import no layer.
CORE = {"db", "settings", "errors", "hub", "lifecycle", "metrics", "__version__"}
# What each layer may import besides the core and itself. The lifecycle of every
# background thread and the metric declarations are core, so the pipeline imports
# nothing of the services and neither imports the runtime.
ALLOWED = {
    "cli": {"commands"},
    "commands": {"pipeline", "services", "runtime", "gateways", "bench", "testing"},
    "runtime": {"pipeline", "services", "gateways"},
    "pipeline": {"gateways"},
    "services": {"gateways"},
    "gateways": set(),
    "bench": {"commands.nearest", "gateways", "pipeline", "services", "testing"},
    "testing": {"pipeline.embedder"},
    "core": set(),
}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) > 1:
        return parts[0]
    return "core" if parts[0] in CORE else parts[0]


def _imports(tree: ast.Module) -> set[str]:
    """argus_embedder modules (dotted, without the package) that a module imports."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.module == "argus_embedder":
            found.update(alias.name for alias in node.names)
        elif node.module.startswith("argus_embedder."):
            base = node.module.removeprefix("argus_embedder.")
            package = PACKAGE / base.replace(".", "/")
            if package.is_dir():  # `from argus_embedder.gateways import queue`
                found.update(f"{base}.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    return found


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        if layer in ("__init__", "__main__", "sql"):
            continue
        allowed = ALLOWED[layer] | {layer}
        for target in _imports(ast.parse(path.read_text())):
            top = target.split(".")[0]
            if top in CORE or top == layer:
                continue
            if not any(target == rule or target.startswith(rule + ".") for rule in allowed):
                wrong.append(f"{path.relative_to(PACKAGE)} ({layer}) imports {target}")
    assert not wrong, "\n".join(wrong)


def _cycles(layer: str) -> list[list[str]]:
    """Circles of imports among one layer's modules (imports inside functions count:
    a deferred import hides a circle, it does not break it)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        graph[name] = {
            target
            for target in _imports(ast.parse(path.read_text()))
            if target.startswith(layer + ".")
        }
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            found.append([*trail[trail.index(name) :], name])
            return
        if name in done or name not in graph:
            return
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        done.add(name)

    for name in graph:
        visit(name, [])
    return found


def test_no_command_imports_another_in_a_circle() -> None:
    """Issue 29: search and moments imported each other (one deferred import hid it);
    what two commands share lives in a module both import (commands/nearest.py)."""
    assert [" → ".join(cycle) for cycle in _cycles("commands")] == []


def test_status_reads_through_gateways_not_services() -> None:
    """An operator's read (issue 29): `status` asks the gateways, never the daemon's
    services (queue_gauges, reconciler), whose jobs are to run in the loop."""
    path = PACKAGE / "commands" / "status.py"
    strays = sorted(
        target
        for target in _imports(ast.parse(path.read_text()))
        if target.startswith(("services", "pipeline", "runtime"))
    )
    assert strays == []


def _loaded_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_the_daemon_loads_no_command_bench_or_test_model() -> None:
    loaded = _loaded_after(
        "import argus_embedder.runtime.daemon, argus_embedder.pipeline.worker, "
        "argus_embedder.services.reconciler, argus_embedder.services.queue_gauges"
    )
    strays = sorted(
        name
        for name in loaded
        if name.startswith(("argus_embedder.bench", "argus_embedder.testing"))
        or name.startswith(("argus_embedder.commands", "argus_embedder.cli"))
    )
    assert strays == []


def test_gateways_never_load_torch_and_decoding_never_loads_the_database_driver() -> None:
    gateways = _loaded_after(
        "import argus_embedder.gateways.queue, argus_embedder.gateways.store, "
        "argus_embedder.gateways.index, argus_embedder.gateways.frames, "
        "argus_embedder.gateways.passes, argus_embedder.gateways.workers, "
        "argus_embedder.gateways.projects, argus_embedder.gateways.counting"
    )
    assert "torch" not in gateways
    decoding = _loaded_after(
        "import argus_embedder.pipeline.images, argus_embedder.pipeline.recipe, "
        "argus_embedder.pipeline.storage"
    )
    assert "psycopg" not in decoding and "torch" not in decoding

"""The tree's rules, checked on every import statement (README, Development: "How the layers
depend on each other")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Stages that may use another stage, and through what. Each entry is a reason, not a habit.
ALLOWED = {
    ("analysis", "services.report"): "the report renders the analysis views",
    ("handsfree", "services.pipeline"): "hands-free mode runs the pipeline on schedules and after loads",
    ("handsfree", "services.dispatch"): "hands-free mode runs dispatch on schedules and after the pipeline",
    ("handsfree", "services.analysis"): "hands-free mode runs the analysis on its schedule",
    ("handsfree", "services.health"): "hands-free mode counts its runs, pushes and alerts on /metrics",
    ("handsfree", "services.supervisor"): "hands-free mode's parts are watch-mode services",
    ("pipeline", "services.energy"): "energy is one of the pipeline's steps",
    ("pull", "services.ingest"): "a pull is loaded through the drop path (Loader, Origin)",
    ("pull", "services.health"): "the pull loop reports the ERP's health",
    ("watcher", "services.ingest"): "watch mode hands each complete file to the loader",
    ("watcher", "services.pull"): "watch mode runs the pull loop",
    ("watcher", "services.health"): "watch mode serves /healthz and /metrics",
    ("watcher", "services.settle"): "watch mode's rules for complete files",
    ("watcher", "services.supervisor"): "watch mode runs its services side by side",
    ("watcher", "services.handsfree"): "watch mode runs what hands-free mode adds",
}


def imports(folder: str) -> list[tuple[str, str]]:
    """(importing module, imported module) for every `import`/`from` in the folder's modules."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((module, node.module))
            elif isinstance(node, ast.Import):
                found += [(module, alias.name) for alias in node.names]
    return found


def stage(module: str) -> str:
    return module.split(".")[1]


def test_models_import_nothing_of_app_or_services() -> None:
    assert [(m, i) for m, i in imports("models") if i.split(".")[0] in ("app", "services")] == []


def test_app_imports_nothing_of_services() -> None:
    assert [(m, i) for m, i in imports("app") if i.split(".")[0] == "services"] == []


def test_a_stage_uses_another_only_through_an_allowed_package_interface() -> None:
    crossing = [
        (m, i)
        for m, i in imports("services")
        if i.startswith("services.") and stage(i) != stage(m) and (stage(m), i) not in ALLOWED
    ]
    assert crossing == []


def test_delivery_warehouse_and_analysis_know_nothing_of_the_loader() -> None:
    stages = ("dispatch", "pipeline", "energy", "analysis", "report", "status")
    assert [
        (m, i)
        for m, i in imports("services")
        if stage(m) in stages and i.startswith(("services.ingest", "services.pull"))
    ] == []

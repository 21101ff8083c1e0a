"""The layer rule of `features/` and `stream/`, read from the source with `ast` (nothing is imported).

Layers, bottom-up; a module may import its own layer and the layers below:

    0  features                                  feature semantics (numpy/pandas; Feast in features.feast_repo only)
    1  stream (the package itself), stream.settings, stream.metrics, stream.health_http
    2  stream.pipeline, stream.serving           pure per-batch processing, the model and scorer
    3  stream.kafka, stream.feast, stream.lifecycle, stream.monitor, stream.registry (model stores)
    4  stream.worker                             Faust
    5  stream.tools, stream.ui
    6  stream.cli

and, whatever the layers say: stream.pipeline and stream.serving reach no
Kafka client, Faust or Feast (not even through what they import);
stream.kafka reaches no Faust; features reaches no Kafka or Faust and
imports Feast in features.feast_repo only; only stream.cli imports the demo
(fraud_demo).

Every import counts: top level, inside functions, under `if TYPE_CHECKING`,
and `importlib.import_module` of a constant name. A failure names each edge
that breaks the rule (module -> imported module, with the line).
"""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("features", "stream")

#: Bottom-up. An entry is a package (or module) and everything under it,
#: except "stream", which is the package's own __init__ only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("features",),
    ("stream", "stream.settings", "stream.metrics", "stream.health_http"),
    ("stream.pipeline", "stream.serving"),
    # stream.monitor is an empty placeholder so far; it sits with the other
    # adapters (it will read what the worker wrote, not run inside it).
    ("stream.kafka", "stream.feast", "stream.lifecycle", "stream.monitor", "stream.registry"),
    ("stream.worker",),
    ("stream.services", "stream.tools", "stream.ui"),  # the status page reads topics and metrics, like the tools
    ("stream.cli",),
)

KAFKA = {"confluent_kafka", "aiokafka"}
FAUST = {"faust", "mode"}
FEAST = {"feast"}
DEMO = "fraud_demo"


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            inside = module == name or (name != "stream" and module.startswith(name + "."))
            if inside and len(name) > best_len:
                best, best_len = index, len(name)
    return best


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@cache
def modules() -> dict[str, Path]:
    """Every module under the packages: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    is_package = modules()[module].name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@cache
def imports(module: str) -> tuple[tuple[str, int], ...]:
    """(imported module, line) for every import in `module`, at any depth."""
    known = modules()
    tree = ast.parse(known[module].read_text(), filename=str(known[module]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                # `from stream import metrics` imports the module stream.metrics.
                sub = f"{source}.{alias.name}"
                found.append((sub if sub in known else source, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
    return tuple(found)


def _edge(module: str, target: str, line: int) -> str:
    return f"{module} -> {target} ({modules()[module].relative_to(ROOT)}:{line})"


def _loaded_with(module: str) -> list[str]:
    """What importing `module` runs first: its parent packages' __init__ modules."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules()]


def reaches(start: str, forbidden: set[str]) -> list[str]:
    """Import chains from `start` (through our own modules) to any top-level package in `forbidden`."""
    known = modules()
    parent: dict[str, tuple[str, int] | None] = {start: None}
    queue = deque([start])
    chains = []
    while queue:
        module = queue.popleft()
        edges = [(p, 0) for p in _loaded_with(module)] + list(imports(module))
        for target, line in edges:
            if target.split(".")[0] in forbidden:
                chain, at = [f"{target} ({known[module].relative_to(ROOT)}:{line})"], module
                while at is not None:
                    chain.append(at)
                    at = parent[at][0] if parent[at] else None
                chains.append(" -> ".join(reversed(chain)))
                continue
            ours = next((m for m in (target, target.rsplit(".", 1)[0]) if m in known), None)
            if ours is not None and ours not in parent:
                parent[ours] = (module, line)
                queue.append(ours)
    return chains


def test_the_source_tree_is_found():
    names = modules()
    assert "stream.pipeline.engine" in names
    assert "features.online" in names
    # `from stream import metrics` is an edge to the module stream.metrics.
    assert "stream.metrics" in {target for target, _ in imports("stream.pipeline.engine")}
    # Function-level imports are seen too.
    assert "lightgbm" in {target for target, _ in imports("stream.lifecycle.train")}


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in modules() if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_modules_import_only_their_own_layer_or_below():
    broken = []
    for module in modules():
        own = layer_of(module)
        for target, line in imports(module):
            if target.split(".")[0] not in PACKAGES:
                continue
            theirs = layer_of(target)
            if theirs is None or own is None or theirs > own:
                broken.append(f"{_edge(module, target, line)}: layer {own} imports layer {theirs}")
    assert not broken, "imports that go up a layer:\n" + "\n".join(broken)


def test_pipeline_and_serving_reach_no_kafka_faust_or_feast():
    pure = [m for m in modules() if in_package(m, "stream.pipeline") or in_package(m, "stream.serving")]
    assert pure
    chains = [chain for m in pure for chain in reaches(m, KAFKA | FAUST | FEAST)]
    assert not chains, "stream.pipeline / stream.serving reach a transport or Feast:\n" + "\n".join(sorted(set(chains)))


def test_the_kafka_adapters_reach_no_faust():
    kafka = [m for m in modules() if in_package(m, "stream.kafka")]
    assert kafka
    chains = [chain for m in kafka for chain in reaches(m, FAUST)]
    assert not chains, "stream.kafka reaches Faust:\n" + "\n".join(sorted(set(chains)))


def test_features_reach_no_kafka_or_faust_and_feast_only_from_feast_repo():
    ours = [m for m in modules() if in_package(m, "features")]
    chains = [chain for m in ours for chain in reaches(m, KAFKA | FAUST)]
    chains += [
        _edge(m, target, line)
        for m in ours
        if m != "features.feast_repo"
        for target, line in imports(m)
        if target.split(".")[0] in FEAST
    ]
    assert not chains, "features/ imports a transport, or Feast outside features/feast_repo.py:\n" + "\n".join(chains)


def test_only_the_cli_imports_the_demo():
    edges = [
        _edge(module, target, line)
        for module in modules()
        if not in_package(module, "stream.cli")
        for target, line in imports(module)
        if target.split(".")[0] == DEMO
    ]
    assert not edges, "only stream/cli/ may import fraud_demo:\n" + "\n".join(edges)

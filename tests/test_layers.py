"""The layer rule of `features/` and `stream/`, read from the source with `ast` (nothing is imported).

Rooms, bottom-up; a module may import its own layer and the layers below:

    0  features                                  feature semantics (numpy/pandas; Feast in features.feast_repo only)
    1  stream (the package itself), stream.settings, stream.metrics, stream.model_files, stream.health_http
    2  stream.pipeline, stream.serving,          pure processing: one micro-batch, one scoring call,
       stream.monitor, stream.lifecycle          one drift update, one label-join step
    3  stream.kafka, stream.feast, stream.registry   thin adapters
    4  stream.lifecycle.train, .labeled_train    training, which reads the feature repo and publishes to a model store
    5  stream.worker                             Faust: the composition root
    6  stream.services, stream.ui                long-running loops beside the worker (monitor, rollout, label sink, status page)
    7  stream.tools                              what measures or tests (bench, chaos, parity, hostile, audit)
    8  stream.cli

and, whatever the layers say: the pure layer reaches no Kafka client,
Faust or Feast (not even through what they import); the adapters import no
domain code (nothing of layer 2 or above: only the standard library,
clients, features and the settings-level modules); stream.kafka reaches no
Faust; features reaches no Kafka or Faust and imports Feast in
features.feast_repo only; only stream.cli imports the demo (fraud_demo);
and no two modules of features/ and stream/ import each other, directly or
around a longer cycle.

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
    ("stream", "stream.settings", "stream.metrics", "stream.model_files", "stream.health_http"),
    PURE := ("stream.pipeline", "stream.serving", "stream.monitor", "stream.lifecycle"),
    ADAPTERS := ("stream.kafka", "stream.feast", "stream.registry"),
    ("stream.lifecycle.train", "stream.lifecycle.labeled_train"),
    ("stream.worker",),
    ("stream.services", "stream.ui"),  # the status page is a service: it reads the topics and metrics
    ("stream.tools",),
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


def test_pure_processing_reaches_no_kafka_faust_or_feast():
    pure = [m for m in modules() if layer_of(m) == LAYERS.index(PURE)]
    assert {"stream.pipeline.engine", "stream.monitor.drift", "stream.lifecycle.label_join"} <= set(pure)
    chains = [chain for m in pure for chain in reaches(m, KAFKA | FAUST | FEAST)]
    assert not chains, f"pure processing ({', '.join(PURE)}) reaches a transport or Feast:\n" + "\n".join(sorted(set(chains)))


def test_adapters_import_no_domain_code():
    """An adapter may use features and the settings-level modules; nothing of pure processing or above."""
    adapters = [m for m in modules() if layer_of(m) == LAYERS.index(ADAPTERS)]
    assert "stream.kafka.control" in adapters
    ceiling = LAYERS.index(PURE)
    broken = [
        _edge(m, target, line)
        for m in adapters
        for target, line in imports(m)
        if target.split(".")[0] in PACKAGES and (layer_of(target) is None or layer_of(target) >= ceiling)
        and layer_of(target) != LAYERS.index(ADAPTERS)
    ]
    assert not broken, "adapters import domain code:\n" + "\n".join(broken)


def _own(target: str) -> str | None:
    """The module of ours an import edge lands on (`from a.b import name` lands on a.b)."""
    known = modules()
    return next((m for m in (target, target.rsplit(".", 1)[0]) if m in known), None)


def import_cycles() -> list[list[str]]:
    """Every strongly connected group of two or more of our modules (or one importing itself), by Tarjan's algorithm."""
    graph = {m: sorted({t for t in map(_own, (t for t, _ in imports(m))) if t is not None}) for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(start: str) -> None:
        # Iterative: the import graph is deep enough to make recursion a risk.
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in graph[node]:
                        groups.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles():
    cycles = import_cycles()
    shown = []
    for group in cycles:
        members = set(group)
        edges = dict.fromkeys(_edge(m, t, line) for m in group for t, line in imports(m) if _own(t) in members)
        shown.append(" | ".join(group) + "\n    " + "\n    ".join(edges))
    assert not cycles, "modules that import each other (directly or around a cycle):\n" + "\n".join(shown)


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

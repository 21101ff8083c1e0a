"""What an operator does with versions: list, show, diff, promote, roll back, retire.

Plain functions over a `ModelStore`, returning data (the CLI prints it,
`--json` as it is). `promote` and `rollback` only move the alias; whoever
also announces the change (a record on the deployments topic) calls them
and publishes what they return.

Rollback is an undo stack over the champion's history: it puts back the
version that was champion before the most recent promotion not yet undone,
so rolling back twice after three promotions returns to the first. It is
refused, with what to do instead, when there is nothing before (the first
champion), when the history no longer describes the champion (its pointer
was changed by hand), or when the version to go back to was retired.
"""

from __future__ import annotations

from stream.registry.base import CHALLENGER, CHAMPION, ModelStore, RegistryError

#: Sections of model.json that `diff` compares, flattened to "section.key".
DIFF_SECTIONS = ("feature_service", "threshold", "threshold_rule", "metrics", "params", "training_window", "rows",
                 "seed", "parent", "trigger", "label_definition")


class NothingToRollBack(RegistryError):
    """The champion's history holds no earlier champion to go back to."""


def promote(store: ModelStore, version: str, *, reason: str = "") -> tuple[str | None, str]:
    """Make `version` (or the version an alias names) champion: (previous champion, new champion)."""
    with store.batch():
        version = store.resolve(version)
        old = store.set_alias(CHAMPION, version, kind="promote", reason=reason or "promoted")
        if store.aliases().get(CHALLENGER) == version:
            store.delete_alias(CHALLENGER, reason=f"became {CHAMPION}")
        return old, version


def rollback_target(store: ModelStore) -> str:
    """The version a rollback would make champion; raises NothingToRollBack saying why there is none."""
    champion = store.aliases().get(CHAMPION)
    moves = [m for m in store.history() if m.get("alias") == CHAMPION]
    if moves and moves[-1].get("new") != champion:
        msg = (
            f"the champion is {champion}, but the registry's last recorded move made it {moves[-1].get('new')}: "
            "the champion pointer was changed outside the registry. Promote the version you want explicitly"
        )
        raise NothingToRollBack(msg)
    undone = 0
    for move in reversed(moves):
        if move.get("kind") == "rollback":
            undone += 1
        elif undone:
            undone -= 1
        elif move.get("old") is None:
            break
        else:
            return move["old"]
    msg = (
        f"nothing to roll back to: champion {champion} has no earlier champion in the registry's history; "
        "promote a version explicitly with `sluice models promote V`"
    )
    raise NothingToRollBack(msg)


def rollback(store: ModelStore, *, reason: str = "") -> tuple[str, str]:
    """Put the champion back to the one before the last promotion: (champion before, champion now)."""
    with store.batch():
        target = rollback_target(store)
        old = store.set_alias(CHAMPION, target, kind="rollback", reason=reason or "rolled back")
        return old, target


def retire(store: ModelStore, version: str, *, reason: str = "") -> str:
    with store.batch():
        version = store.resolve(version)
        store.retire(version, reason=reason)
        return version


def list_versions(store: ModelStore) -> list[dict]:
    return [
        {"version": v.version, "created_at": v.created_at, "status": v.status, "aliases": list(v.aliases),
         "auc": v.auc, "threshold": v.threshold, "trigger": v.trigger, "parent": v.parent}
        for v in store.versions()
    ]


def show(store: ModelStore, version: str, *, top: int = 5) -> dict:
    """The metadata of a version with its aliases and status; the reference reduced to its top contributions."""
    version = store.resolve(version)
    meta = dict(store.meta(version))
    reference = meta.pop("reference", None) or {}
    rank = reference.get("contribution_rank") or []
    contributions = reference.get("contributions") or {}
    meta["top_contributions"] = [[name, contributions.get(name)] for name in rank[:top]]
    meta["reference_rows"] = reference.get("rows")
    meta["aliases"] = sorted(a for a, v in store.aliases().items() if v == version)
    meta["status"] = store.status(version)
    return meta


def diff(store: ModelStore, a: str, b: str) -> dict:
    """What differs between two versions: {"a", "b", "changes": {key: [in a, in b]}, "features": {...}}."""
    a, b = store.resolve(a), store.resolve(b)
    meta_a, meta_b = store.meta(a), store.meta(b)
    flat_a, flat_b = _flatten(meta_a), _flatten(meta_b)
    changes = {k: [flat_a.get(k), flat_b.get(k)] for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)}
    fa, fb = list(meta_a.get("features") or []), list(meta_b.get("features") or [])
    features = {
        "added": [f for f in fb if f not in fa],
        "removed": [f for f in fa if f not in fb],
        "reordered": [f for f in fa if f in fb] != [f for f in fb if f in fa],
    }
    return {"a": a, "b": b, "changes": changes, "features": features}


def _flatten(meta: dict) -> dict:
    flat = {}
    for section in DIFF_SECTIONS:
        value = meta.get(section)
        if isinstance(value, dict):
            for key, inner in value.items():
                flat[f"{section}.{key}"] = inner
        elif value is not None:
            flat[section] = value
    return flat

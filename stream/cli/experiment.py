"""`sluice experiment report`: is the challenger better? Always-valid comparisons from the labeled topic."""

from __future__ import annotations

import json
import math


def _thresholds(settings, versions) -> dict[str, float]:
    """Each version's threshold from the registry, where it has the version (else the rows' own are used)."""
    from stream.registry import RegistryError, open_store

    try:
        store = open_store(settings.registry or settings.model_dir)
    except (RegistryError, OSError):
        return {}
    out = {}
    for version in versions:
        try:
            threshold = store.meta(version).get("threshold")
        except (RegistryError, OSError):
            continue
        if threshold is not None:
            out[version] = float(threshold)
    return out


def collect(settings, idle_s: float, test) -> dict:
    import orjson

    from features.feast_repo import load_plan, open_store
    from features.errors import SluiceError
    from stream.kafka.control import history
    from stream.kafka.reader import read_topic
    from stream.lifecycle.experiment_report import report
    from stream.serving.deployment import Deployment

    deployments = history(settings.bootstrap_servers, settings.deployments_topic, Deployment.from_json)
    if not deployments:
        msg = f"no deployment record on {settings.deployments_topic}: nothing is being compared (see `sluice deploy`)"
        raise SluiceError(msg)
    id_field = load_plan(open_store(settings.repo_path), settings.feature_service).schema.event_id
    records = [orjson.loads(m.value()) for m in read_topic(settings.bootstrap_servers, settings.labeled_topic,
                                                           idle_s=idle_s, timeout_s=600)]
    current = max(deployments, key=lambda d: d.seq)
    return report(records, deployments, id_field, _thresholds(settings, current.versions), test)


def _num(x, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def render(result: dict) -> str:
    d = result["deployment"]
    lines = [f"deployment {d['seq']}: {d['mode']}, champion {d['champion']}"
             + (f", challengers {', '.join(d['challengers'])}" if d["challengers"] else "")
             + (f", share {d['share']:g}" if d["mode"] in ("canary", "ab") else "")]
    if not result["experiments"]:
        lines.append("no experiment: the champion serves alone")
    for e in result["experiments"]:
        lines.append(f"{e['challenger']} against {e['champion']} ({e['kind']}, {e['n']:,} labeled events, "
                     f"{e['positives']:,} positives): {e['decision'].upper()}")
        for name, m in e["metrics"].items():
            lines.append(f"  {name}, champion - challenger (> 0: challenger better): {_num(m['effect'])} "
                         f"[{_num(m['lower'])}, {_num(m['upper'])}], always-valid p {_num(m['p_value'], 3)}"
                         + ("  (decides)" if name == e["metric"] else ""))
        agreement = e.get("agreement")
        if agreement:
            lines.append(f"  decisions agree on {agreement['rate']:.1%} of {agreement['events']:,} events "
                         f"(champion alone positive {agreement['champion_only']:,}, "
                         f"challenger alone {agreement['challenger_only']:,})")
        ratio = e.get("sample_ratio")
        if ratio:
            lines.append(f"  arms: A {ratio['a']:,}, B {ratio['b']:,} labeled events against a split of "
                         f"{ratio['expected_share_b']:g} to B; sample-ratio p {_num(ratio['p_value'], 3)}"
                         + (": MISMATCH, the arms are not the configured split" if ratio["mismatch"] else ""))
    lines.append(f"intervals and p-values stay valid at every look (alpha {result['experiments'][0]['alpha']:g}); "
                 "act on the first report that says promote or stop" if result["experiments"] else "")
    return "\n".join(line for line in lines if line)


def run(args, settings) -> int:
    from stream.lifecycle.experiments import Settings as Test

    test = Test(alpha=args.alpha, metric=args.metric, min_n=args.min_labeled)
    result = collect(settings, args.idle, test)
    print(json.dumps(result) if args.json else render(result))
    return 0


def add_parser(sub, settings_of) -> None:
    """`settings_of(args)` builds the Settings and checks that the broker answers."""
    from stream.cli import options
    from stream.lifecycle.experiments import ALPHA, METRICS, MIN_N

    p = sub.add_parser("experiment", help="champion against challengers, from the labels: always-valid comparisons")
    cmds = p.add_subparsers(dest="experiment_command", required=True, metavar="COMMAND")
    r = cmds.add_parser(
        "report", help="per challenger of the deployment in force: effect, interval, always-valid p-value, decision",
        description=(
            "Read the deployments topic (which versions are compared, and how) and the labeled topic (the label "
            "join's records), and compare each challenger with the champion: paired on the same events in shadow "
            "and canary mode (champion's loss minus challenger's, log loss and Brier), per arm in A/B mode with the "
            "sample-ratio check. The intervals are confidence sequences: reading the report after every batch of "
            "labels does not raise the false-positive rate above alpha. See docs/lifecycle.md."
        ),
    )
    options.add_broker(r, "required")
    options.add_repo(r)
    options.add_model_dir(r)
    options.add_log_level(r)
    r.add_argument("--json", action="store_true", help="print the report as one JSON object")
    r.add_argument("--alpha", type=float, default=ALPHA, help=f"error rate over every look (default {ALPHA})")
    r.add_argument("--metric", choices=METRICS, default="log_loss", help="the metric that decides (default log_loss)")
    r.add_argument("--min-labeled", type=int, default=MIN_N,
                   help=f"no decision before this many labeled events (default {MIN_N})")
    r.add_argument("--idle", type=float, default=3.0, help="stop reading once nothing arrived for this many seconds (default 3)")
    r.set_defaults(func=lambda args: run(args, settings_of(args)))

"""The benchmark's printed table and the machine it ran on."""

from __future__ import annotations

import os
import platform
import time

import psutil

def machine(broker: str) -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "broker": broker,
    }


SYSTEMS = (("sluice", "sluice"), ("two_workers", "sluice x2 workers"), ("faust_parse", "faust parse-only"),
           ("naive", "naive per-event"), ("quix", "quix streams"))


def print_table(r: dict) -> None:
    m, cfg = r["machine"], r["config"]
    print("\n=== sluice bench ===")
    print(f"machine  {m['platform']}, {m['cpus']} CPUs, {m['memory_gb']} GB, Python {m['python']}, broker {m['broker']}")
    mod = cfg["model"]
    print(f"model    {mod['version']}: {mod['trees']} trees, {mod['num_leaves']} leaves, {mod['features']} features "
          f"(AUC {mod['validation_auc']}); {cfg['entities']:,} entities, {cfg['partitions']} partitions")
    print("\nthroughput: a backlog read at full speed (first to last output)")
    print(f"  {'system':<20}{'events':>9}{'events/s':>11}{'from ready':>12}{'peak RSS MB':>13}{'CPU cores':>11}")
    for key, label in SYSTEMS:
        s = r.get(key)
        if s is None or s.get("skipped"):
            continue
        print(f"  {label:<20}{s['events']:>9,}{_num(s['events_per_s']):>11}{_num(s['events_per_s_from_ready']):>12}"
              f"{s['peak_rss_mb']:>13,.0f}{s.get('cpu_cores_busy', 0):>11.2f}")
        if "events_per_s_first_to_last" in s:
            print(f"  {'':<20}(the group rebalanced mid-run: rate after it, over {s['outputs_after_rebalance']:,} "
                  f"outputs; first to last {_num(s['events_per_s_first_to_last'])}/s)")
    print("\nlatency: event produced -> output produced (Kafka timestamps), ms")
    print(f"  {'system':<20}{'rate/s':>8}{'p50':>9}{'p99':>9}{'p99.9':>9}{'in/s':>9}{'out/s':>9}  verdict")
    hop = r.get("broker_hop", {})
    if "p50_ms" in hop:
        print(f"  {'broker, one hop':<20}{hop['rate']:>8,}{_ms(hop['p50_ms']):>9}{_ms(hop['p99_ms']):>9}{_ms(hop['p999_ms']):>9}"
              f"  (produce -> consume, nothing in between: paid once per hop)")
    for key, label in SYSTEMS:
        for rate, ph in r.get(key, {}).get("latency", {}).items():
            if ph.get("skipped"):
                print(f"  {label:<20}{int(rate):>8,}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{_num(ph['achieved_events_per_s']):>9}"
                      f"  saturated (not attempted: {ph['reason']})")
                continue
            verdict = "SATURATED" if ph["saturated"] else "sustained"
            print(f"  {label:<20}{int(rate):>8,}{_ms(ph.get('p50_ms')):>9}{_ms(ph.get('p99_ms')):>9}"
                  f"{_ms(ph.get('p999_ms')):>9}{_num(ph['input_events_per_s']):>9}{_num(ph['output_events_per_s']):>9}"
                  f"  {verdict}")
    st = r["state"]
    print(f"\nstate    {st['entities']:,} entities x 2 events: {st['bytes_per_entity']:,.0f} bytes/entity serialized, "
          f"{st['python_bytes_per_entity']:,.0f} as Python objects, {st['rss_bytes_per_entity']:,.0f} RSS delta")
    for name, view in st["per_view"].items():
        print(f"         {name:<20} {view['entries']:>10,} entries, {view['bytes_per_entry']:,.0f} bytes each")
    off = r["offline"]
    print(f"offline  {off['events']:,} events, {off['view']} ({off['features']} features): compute_features "
          f"{_num(off['compute_features_events_per_s'])}/s, pandas rolling {_num(off['pandas_events_per_s'])}/s "
          f"-> {off['speedup_vs_pandas']}x; all views {_num(off['compute_features_all_views_events_per_s'])}/s")
    print(f"         agreement: max abs diff {off['max_abs_diff']:.3g}, max rel diff {off['max_rel_diff']:.3g} "
          f"({off['max_rel_diff_feature']}), {off['nan_mismatches']} NaN mismatches over {off['compared_rows']:,} rows")
    ratios = ", ".join(f"{k} {v}" for k, v in r["ratios"].items())
    print(f"ratios   {ratios}\n", flush=True)


def _num(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def step(text: str) -> float:
    print(f"· {text}", flush=True)
    return time.perf_counter()


def done(started: float, extra: str = "") -> None:
    print(f"  done in {time.perf_counter() - started:.1f} s{(' — ' + extra) if extra else ''}", flush=True)


def model_info(model_dir) -> dict:
    """What the benchmark's model is: version, trees, leaves, features, validation AUC."""
    from stream.serving.model import load_model

    model = load_model(model_dir)
    trees = model.booster.dump_model()["tree_info"]
    return {
        "version": model.version,
        "trees": model.booster.num_trees(),
        "num_leaves": int(model.meta["params"]["num_leaves"]),
        "max_leaves_in_a_tree": max(t["num_leaves"] for t in trees),
        "features": len(model.features),
        "validation_auc": round(float(model.meta["validation_auc"]), 4),
    }

"""The page's Experiments section against `sluice experiment report --json` on the same topics (real broker, chromium)."""

from __future__ import annotations

import time
import urllib.request

import orjson

from stream.kafka.clients import make_producer
from stream.kafka.control import publish
from tests.stream.lifecycle.experiment_records import SHADOW, shadow_records
from tests.stream.lifecycle.test_experiment_report import _run, applied_repo  # noqa: F401 - a fixture
from tests.stream.ui.test_status_page import _check_layout, _wait, read_page


def _sig(value) -> float:
    """As the page rounds: four significant digits."""
    return float(f"{value:.4g}")


def test_experiments_section_shows_the_commands_numbers(broker, topics, ui, chromium, applied_repo, tmp_path):
    repo_path, id_field = applied_repo
    bootstrap = broker.bootstrap_servers
    for deployment in SHADOW:
        publish(bootstrap, topics["deployments"], deployment)
    records = shadow_records(id_field, 1200, seed=7, correct_every=25)
    # The first half came in two hours ago, before the page's lookback: the report still counts it.
    producer = make_producer(bootstrap)
    old_ms = int((time.time() - 7200) * 1000)
    for i, r in enumerate(records):
        producer.produce(topics["labeled"], orjson.dumps(r), str(r[id_field]).encode(),
                         timestamp=old_ms if i < len(records) // 2 else 0)
    assert producer.flush(30) == 0
    expected = _run(broker, repo_path, topics["labeled"], topics["deployments"], tmp_path)["experiments"][0]

    chromium.get(ui + "/?refresh=500")
    script = 'return Array.from(document.querySelectorAll("#table-experiments tbody tr")).map(' \
             '(tr) => Array.from(tr.cells).map((td) => td.textContent));'
    shown = _wait("the experiment's row", lambda: (r := chromium.execute_script(script)) and r[0][2] != "–"
                  and int(r[0][2].replace(",", "")) == expected["n"] and r)
    (pair, kind, n, effect, interval, p_value, decision, ratio), = shown
    assert (pair, kind, n, decision, ratio) == ("v2 vs v1", "paired", f"{expected['n']:,}", expected["decision"], "–")
    assert float(effect) == _sig(expected["effect"]) and float(p_value) == _sig(expected["p_value"])
    assert [float(x) for x in interval.strip("[]").split(", ")] == [_sig(x) for x in expected["interval"]]
    assert expected["n"] == 1200  # every event labeled once, corrections replacing labels
    # The online metrics still count only what came in within the lookback.
    with urllib.request.urlopen(ui + "/api/status", timeout=10) as reply:
        online = orjson.loads(reply.read())["online"]
    assert online["v1"]["rows"] == len({r[id_field] for r in records[len(records) // 2:]})
    _check_layout(_wait("a render", lambda: read_page(chromium)))

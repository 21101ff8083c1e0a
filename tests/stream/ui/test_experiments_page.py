"""The page's Experiments section against `sluice experiment report --json` on the same topics (real broker, chromium)."""

from __future__ import annotations

from stream.kafka.control import publish
from tests.stream.lifecycle.experiment_records import SHADOW, shadow_records
from tests.stream.lifecycle.test_experiment_report import _produce, _run, applied_repo  # noqa: F401 - a fixture
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
    _produce(broker, topics["labeled"], records, id_field)
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
    _check_layout(_wait("a render", lambda: read_page(chromium)))

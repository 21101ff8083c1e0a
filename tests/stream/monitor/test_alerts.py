"""Alerts open once, escalate once, are not re-sent while open, and close once after hysteresis."""

from __future__ import annotations

from stream.monitor.alerts import ALERT, RECOVERY, AlertBook, Check
from stream.monitor.thresholds import DEFAULT_RULES

PSI = DEFAULT_RULES["psi"]  # warning 0.1, critical 0.25
NDCG = DEFAULT_RULES["ndcg"]  # below 0.9


def _check(value: float, statistic: str = "psi", n: int = 0, floor: float = 0.0, reference=None) -> Check:
    window = {"start": f"s{n}", "end": f"e{n}", "events": 5000, "sub_windows": 24, "time": "event"}
    return Check("v1", "amount", statistic, value, reference, window, f"f{n}", f"l{n}", floor)


def _run(book: AlertBook, values, rule=PSI, statistic="psi") -> list[dict]:
    out = []
    for n, v in enumerate(values):
        record = book.observe(_check(v, statistic, n), rule, f"t{n}")
        if record is not None:
            out.append(record)
    return out


def test_an_open_alert_is_not_sent_again_every_window():
    records = _run(AlertBook(), [0.05, 0.12, 0.13, 0.15, 0.14, 0.12])
    assert [(r["kind"], r["severity"]) for r in records] == [(ALERT, "warning")]
    first = records[0]
    assert first["value"] == 0.12 and first["threshold"] == 0.1 and first["window"]["end"] == "e1"
    assert first["first_event_time"] == "f1" and first["last_event_time"] == "l1" and first["model_version"] == "v1"


def test_escalation_is_one_record_and_recovery_is_one_record_after_hysteresis():
    # 0.3 crosses critical; 0.24 and 0.2 are back under 0.25 but not under 0.25 * 0.8 = 0.2: it stays critical;
    # 0.15 three times in a row steps it down to warning quietly; 0.05 three times clears it.
    values = [0.12, 0.3, 0.24, 0.2, 0.15, 0.15, 0.15, 0.09, 0.05, 0.05, 0.05, 0.05]
    records = _run(AlertBook(hysteresis=0.2, clear_after=3), values)
    assert [(r["kind"], r["severity"]) for r in records] == [(ALERT, "warning"), (ALERT, "critical"), (RECOVERY, None)]
    recovery = records[-1]
    assert recovery["value"] == 0.05 and recovery["window"]["end"] == "e10"
    assert recovery["opened"]["severity"] == "critical"


def test_a_value_hovering_at_the_line_does_not_flap():
    values = [0.11, 0.095, 0.105, 0.09, 0.11, 0.099, 0.101] * 5
    records = _run(AlertBook(hysteresis=0.2, clear_after=3), values)
    assert len(records) == 1


def test_a_recovery_needs_consecutive_evaluations_inside():
    values = [0.2, 0.01, 0.01, 0.15, 0.01, 0.01, 0.01]
    records = _run(AlertBook(clear_after=3), values)
    assert [r["kind"] for r in records] == [ALERT, RECOVERY]
    assert records[1]["window"]["end"] == "e6"


def test_below_rules_alarm_low_and_clear_high():
    records = _run(AlertBook(hysteresis=0.2, clear_after=2), [0.95, 0.85, 0.91, 0.93, 0.94], NDCG, "ndcg")
    # clears above 0.9 + 0.1 * 0.2 = 0.92, twice in a row
    assert [r["kind"] for r in records] == [ALERT, RECOVERY]
    assert records[1]["value"] == 0.94


def test_values_under_the_noise_floor_never_open_an_alert():
    book = AlertBook()
    assert book.observe(_check(0.4, floor=0.5), PSI, "t") is None
    assert book.observe(_check(0.4, floor=0.3), PSI, "t")["severity"] == "critical"


def test_relative_rules_compare_with_the_reference():
    rule = DEFAULT_RULES["missing_share"]  # 5 points over the reference's share
    book = AlertBook()
    assert book.observe(_check(0.30, "missing_share", reference=0.28), rule, "t") is None
    record = book.observe(_check(0.40, "missing_share", reference=0.28), rule, "t")
    assert record["kind"] == ALERT and record["reference"] == 0.28


def test_a_restored_book_does_not_resend_what_was_open():
    first = AlertBook()
    sent = _run(first, [0.3, 0.3])
    second = AlertBook()
    second.restore(sent)
    assert second.observe(_check(0.3), PSI, "t") is None
    recovered = AlertBook()
    recovered.restore([*sent, {**sent[0], "kind": RECOVERY}])
    assert recovered.observe(_check(0.3), PSI, "t")["kind"] == ALERT


def test_closing_a_version_recovers_each_of_its_open_alerts_once():
    book = AlertBook()
    _run(book, [0.12, 0.3])
    book.observe(Check("v2", "amount", "psi", 0.3, None, {"end": "e"}, "f", "l"), PSI, "t")
    records = book.close_version("v1", "later", "the version no longer serves")
    assert [(r["kind"], r["model_version"], r["reason"], r["opened"]["severity"]) for r in records] == [
        (RECOVERY, "v1", "the version no longer serves", "critical")
    ]
    assert list(book.open) == [("v2", "amount", "psi")] and book.close_version("v1", "again", "-") == []
    restored = AlertBook()
    restored.restore(_run(AlertBook(), [0.3]) + records)  # a restarted monitor does not reopen it
    assert restored.open == {}

"""Default thresholds, and overrides per statistic and per feature from a file."""

from __future__ import annotations

import pytest

from stream.monitor.thresholds import ThresholdsError, Thresholds


def test_defaults_are_the_anchors():
    t = Thresholds()
    assert t.rule("any", "psi").levels == (("warning", 0.1), ("critical", 0.25))
    assert t.rule("any", "js").levels == (("critical", 0.1),)
    assert t.rule("attribution", "ndcg").direction == "below"
    assert t.rule("any", "nonsense") is None
    assert t.windows.sub_windows == 24 and t.windows.sub_window_s == 3600


def test_a_yaml_file_overrides_windows_statistics_and_single_features(tmp_path):
    path = tmp_path / "thresholds.yaml"
    path.write_text(
        "window: {sub_window_s: 600, sub_windows: 6, min_events: 500}\n"
        "statistics:\n  psi: {warning: 0.15}\n"
        "features:\n  amount:\n    psi: {critical: 0.5}\n    missing_share: off\n"
    )
    t = Thresholds.load(path)
    assert (t.windows.sub_window_s, t.windows.sub_windows, t.windows.min_events) == (600, 6, 500)
    assert t.rule("other", "psi").levels == (("warning", 0.15), ("critical", 0.25))
    assert t.rule("amount", "psi").levels == (("warning", 0.15), ("critical", 0.5))
    assert t.rule("amount", "missing_share") is None
    assert t.rule("other", "missing_share") is not None


def test_json_works_too_and_mistakes_say_what_to_fix(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"statistics": {"js": {"critical": 0.2}}}')
    assert Thresholds.load(path).rule("x", "js").levels == (("critical", 0.2),)
    for text, words in [
        ('{"statistic": {}}', "unknown sections"),
        ('{"statistics": {"psy": {"warning": 1}}}', "unknown statistic"),
        ('{"statistics": {"psi": 0.2}}', "expected {warning"),
        ('{"window": {"sub_window": 5}}', "window"),
        ("{", "cannot read"),
    ]:
        path.write_text(text)
        with pytest.raises(ThresholdsError, match=words):
            Thresholds.load(path)

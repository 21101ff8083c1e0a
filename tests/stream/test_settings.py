"""Settings read from the environment: where the label join runs (SLUICE_LABEL_JOIN)."""

from __future__ import annotations

import pytest

from stream.kafka.topics import AppTopics
from stream.settings import Settings, SettingsError


@pytest.mark.parametrize(("raw", "where"), [
    ("off", "off"), ("0", "off"), ("false", "off"), ("inline", "inline"), ("1", "inline"), ("TRUE", "inline"),
    ("yes", "inline"), ("service", "service"), ("Service", "service"),
])
def test_the_label_join_setting_keeps_its_old_flag_spellings(monkeypatch, raw, where):
    monkeypatch.setenv("SLUICE_LABEL_JOIN", raw)
    assert Settings.from_env().label_join == where


def test_an_unknown_place_for_the_label_join_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("SLUICE_LABEL_JOIN", "elsewhere")
    with pytest.raises(SettingsError, match="SLUICE_LABEL_JOIN='elsewhere'.*off, inline, service"):
        Settings.from_env()


def test_join_workers_have_a_group_and_a_table_of_their_own():
    settings = Settings(app_id="fraud", label_join="service")
    topics = AppTopics.of(settings, "transactions")
    assert settings.join_app_id == "fraud-join"
    assert topics.label_join_changelog("inline") == "fraud-label-join-changelog" == topics.changelog("label-join")
    assert topics.label_join_changelog("service") == "fraud-join-label-join-changelog"
    assert Settings().label_join == "off" and Settings(label_join=True).label_join == "inline"

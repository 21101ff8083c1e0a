"""What the label join is told: its topics' roles, the FeatureService's label declaration, the partitioner.

The label definition lives with the FeatureService, as tags (the demo's in
feature_repo/fraud_features.py): `sluice.label_column`, `.label_time_field`,
`.label_window` (how long a prediction waits for its label), `.label_default`
(its label when the window closes without one; "none": no label) and
`.label_grace` (how long a label waits for its prediction, and a closed
prediction for late labels and corrections). Durations read "7d", "12h", "30m".
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from features.errors import SluiceError

LABELS, LOG = "labels", "prediction_log"
#: Key of a clock record on the labels topic: "the label source has sent every label up to this time".
CLOCK_KEY = b"\x00clock"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


class LabelConfigError(SluiceError):
    """The FeatureService's label declaration cannot be used."""


def duration_ms(text: str, tag: str) -> int:
    hit = _DURATION.match(str(text))
    if not hit:
        msg = f"FeatureService tag {tag}={text!r} is not a duration; write e.g. '7d', '12h', '30m'"
        raise LabelConfigError(msg)
    return int(float(hit.group(1)) * _UNIT_MS[hit.group(2)])


def partition_for(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (consistent_random: CRC32 of the key) gives `key`.

    The worker produces the prediction log with that partitioner; labels must
    land where their prediction did (see `stream.kafka.labels.LabelSender`).
    """
    return zlib.crc32(key) % partitions


@dataclass(frozen=True)
class JoinConfig:
    id_field: str
    label_field: str
    time_field: str = "label_time"
    window_ms: int = 7 * 86_400_000
    grace_ms: int = 14 * 86_400_000
    default_label: float | None = None
    bucket_ms: int = 3_600_000
    partitions: int = 4
    labeled_topic: str = "labeled"
    labels_topic: str = "labels"
    labels_dlq_topic: str = "labels.dlq"  # AppTopics.labels_dlq: where unreadable labels go
    max_message_bytes: int = 1_000_000

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], id_field: str, **kw) -> JoinConfig:
        """From the FeatureService tags: sluice.label_column, .label_time_field, .label_window, .label_grace, .label_default."""
        default = tags.get("sluice.label_default")
        return cls(
            id_field=id_field,
            label_field=tags.get("sluice.label_column", "label"),
            time_field=tags.get("sluice.label_time_field", "label_time"),
            window_ms=duration_ms(tags.get("sluice.label_window", "7d"), "sluice.label_window"),
            grace_ms=duration_ms(tags.get("sluice.label_grace", "14d"), "sluice.label_grace"),
            default_label=None if default in (None, "", "none") else float(default),
            **kw,
        )

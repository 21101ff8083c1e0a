"""Is the broker there? One quiet metadata request before a command starts its real clients.

Without it, a command pointed at a wrong address spends its clients' own
timeouts (30 s and more), while librdkafka prints a line for every failed
connection attempt (hundreds), and then ends in a traceback or keeps running.
Here one admin client asks for the cluster's metadata with a short timeout,
its log silenced (`log_level` 0: librdkafka reports connection failures at
level 3), and the reason it could not connect (refused, unresolvable name, TLS
or SASL failure) is kept from its error callback for the one line the
operator reads. The client gets the same security settings as every other
client (stream/kafka/security.py), so a check that passes means the real
clients can connect too.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from features.errors import SluiceError
from stream.kafka.security import librdkafka_config
from stream.settings import Settings

#: Long enough for a TLS and SASL handshake over a slow link, short enough that a wrong address is reported at once.
REACH_TIMEOUT_S = 4.0

#: Error codes that say nothing about why (the summary librdkafka adds after each failed attempt).
_VAGUE = (KafkaError._ALL_BROKERS_DOWN,)


class BrokerUnreachable(SluiceError):
    """The bootstrap servers did not answer a metadata request in time."""


def check_reachable(settings: Settings, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Return once the broker at `settings.bootstrap_servers` answers; else raise BrokerUnreachable in one line.

    Raises SettingsError (before connecting) when the security settings are inconsistent.
    """
    bootstrap = settings.bootstrap_servers
    security = librdkafka_config(settings)
    reasons: list[str] = []

    def on_error(error: KafkaError) -> None:
        if error.code() not in _VAGUE:
            reasons.append(error.str())

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "error_cb": on_error, **security})
    try:
        admin.list_topics(timeout=timeout_s)
        return
    except KafkaException as exc:
        failure = exc.args[0].str()
    admin.poll(0)  # error callbacks are served here
    protocol = security.get("security.protocol", "PLAINTEXT")
    why = " ".join((reasons[-1] if reasons else failure).split())  # one line, whatever the library wrote
    msg = (
        f"cannot reach Kafka at {bootstrap} over {protocol} within {timeout_s:g} s ({why}); check that the broker "
        "is up and --bootstrap-servers (or SLUICE_BOOTSTRAP_SERVERS), and for TLS or SASL SLUICE_SECURITY_PROTOCOL, "
        "SLUICE_SSL_CA_FILE and SLUICE_SASL_*"
    )
    raise BrokerUnreachable(msg)

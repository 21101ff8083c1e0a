"""Thin confluent-kafka helpers: topics, a producer that reports delivery, readers.

Every client made here gets the process's security settings (TLS, SASL):
`client_config` adds them to whatever a caller passes. They are the ones
given to `configure(settings)`: every command hands it the Settings it built,
once, before its first client. A process that never calls it (a library
user, a test) gets the ones in the environment (SLUICE_SECURITY_PROTOCOL and
friends). One process-wide value rather than a config threaded through every
call: the call sites pass a bootstrap string and nothing else, the security
settings do not change during a run, and a child process (a worker started
by a tool) inherits them with the environment and configures itself.
"""

from __future__ import annotations


from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from features.errors import SluiceError
from stream.kafka.security import librdkafka_config
from stream.settings import Settings


class KafkaDeliveryError(SluiceError):
    """An output could not be delivered; the batch is not committed and will be retried."""


_security: dict[str, str] | None = None  # set by configure(); None: read the environment


def configure(settings: Settings | None) -> None:
    """Use the security settings of `settings` for every client made from now on (None: back to the environment).

    Raises SettingsError for an inconsistent combination, naming the variable to fix.
    """
    global _security
    _security = None if settings is None else librdkafka_config(settings)


def security_config() -> dict[str, str]:
    """The librdkafka security options in force ({} for PLAINTEXT)."""
    return dict(_security) if _security is not None else librdkafka_config(Settings.from_env())


def client_config(bootstrap: str, **extra) -> dict:
    """A confluent-kafka client config: bootstrap servers, quiet logs, the security options, then `extra`."""
    return {"bootstrap.servers": bootstrap, "log_level": 3, **security_config(), **extra}


def make_admin(bootstrap: str) -> AdminClient:
    return AdminClient(client_config(bootstrap))


def make_consumer(bootstrap: str, **extra) -> Consumer:
    return Consumer(client_config(bootstrap, **extra))


def _list_topics(admin: AdminClient, bootstrap: str, timeout_s: float, topic: str | None = None):
    try:
        return admin.list_topics(topic=topic, timeout=timeout_s)
    except KafkaException as exc:
        protocol = security_config().get("security.protocol", "PLAINTEXT")
        msg = (
            f"cannot reach Kafka at {bootstrap} over {protocol} within {timeout_s:g} s ({exc.args[0].str()}); "
            "check --bootstrap-servers and SLUICE_SECURITY_PROTOCOL, SLUICE_SSL_CA_FILE and the SASL settings"
        )
        raise SluiceError(msg) from exc


def ensure_topics(bootstrap: str, names: list[str], partitions: int, timeout_s: float = 30.0) -> None:
    """Create missing topics; existing ones are left as they are."""
    admin = make_admin(bootstrap)
    existing = set(_list_topics(admin, bootstrap, timeout_s).topics)
    missing = [n for n in dict.fromkeys(names) if n not in existing]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing])
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                msg = f"cannot create topic {name}: {exc}; create it by hand with {partitions} partitions"
                raise SluiceError(msg) from exc


def topic_partitions(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    meta = _list_topics(make_admin(bootstrap), bootstrap, timeout_s, topic)
    return len(meta.topics[topic].partitions) if topic in meta.topics else 0


def topic_partition_counts(bootstrap: str, topics: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Topic -> partition count, for those of `topics` that exist (one metadata request)."""
    meta = _list_topics(make_admin(bootstrap), bootstrap, timeout_s)
    return {t: len(meta.topics[t].partitions) for t in topics if t in meta.topics}


#: How long the producers gather records for a partition before sending (ms).
PRODUCER_LINGER_MS = 2


def make_producer(bootstrap: str, **extra) -> Producer:
    config = client_config(
        bootstrap,
        **{
            "enable.idempotence": True,
            "linger.ms": PRODUCER_LINGER_MS,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        },
    )
    config.update(extra)
    return Producer(config)


def warmed_producer(bootstrap: str, warmup_topic: str, **extra) -> Producer:
    """A producer that has connected and obtained its producer id.

    A new idempotent producer needs about half a second (on the embedded
    broker) before it can send; records produced meanwhile carry timestamps
    from before the wait. Tools that measure latency from those timestamps
    use this, so the wait is not charged to the system they measure. One
    record goes to `warmup_topic` (created if missing).
    """
    producer = make_producer(bootstrap, **extra)
    ensure_topics(bootstrap, [warmup_topic], 1)
    producer.produce(warmup_topic, b"warm-up")
    if producer.flush(30):
        msg = f"could not produce to {warmup_topic} within 30 s"
        raise SluiceError(msg)
    return producer

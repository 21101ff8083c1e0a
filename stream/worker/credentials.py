"""The worker's Kafka security settings in Faust's terms (the confluent-kafka side is stream.kafka.security)."""

from __future__ import annotations

import faust

from stream.kafka.security import checked_protocol, ssl_context
from stream.settings import Settings


def faust_credentials(settings: Settings):
    """Faust's `broker_credentials` for these settings (None for PLAINTEXT).

    Faust hands them to aiokafka for the worker's consumer, its producer and
    the topics it creates.
    """
    protocol, mechanism = checked_protocol(settings)
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password,
        mechanism=mechanism,
        ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
    )

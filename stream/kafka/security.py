"""Kafka client security from Settings: one librdkafka config and one set of Faust credentials.

Sluice talks to Kafka through two client libraries: confluent-kafka
(librdkafka: producers, readers, admin) and Faust (aiokafka: the worker's
consumer group, its producer and its topic creation). Both get their
security settings from the same five fields of `Settings`
(SLUICE_SECURITY_PROTOCOL, SLUICE_SASL_MECHANISM, SLUICE_SASL_USERNAME,
SLUICE_SASL_PASSWORD, SLUICE_SSL_CA_FILE), checked once here so that a
misconfiguration stops the command with the variable to fix instead of
surfacing as a connection timeout.

The password is passed to the client libraries and nowhere else: it is not in
`repr(settings)`, in the repr of Faust's credentials, or in any message here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from stream.settings import Settings, SettingsError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def checked_protocol(settings: Settings) -> tuple[str, str | None]:
    """The protocol and mechanism, upper-cased; raise SettingsError naming the variable to fix."""
    protocol = (settings.security_protocol or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        msg = f"SLUICE_SECURITY_PROTOCOL={settings.security_protocol!r} is not one of {', '.join(PROTOCOLS)}"
        raise SettingsError(msg)
    sasl = protocol.startswith("SASL_")
    mechanism = settings.sasl_mechanism.upper() if settings.sasl_mechanism else None
    if sasl:
        if mechanism is None:
            msg = f"SLUICE_SECURITY_PROTOCOL={protocol} needs SLUICE_SASL_MECHANISM (one of {', '.join(MECHANISMS)})"
            raise SettingsError(msg)
        if mechanism not in MECHANISMS:
            msg = f"SLUICE_SASL_MECHANISM={settings.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}"
            raise SettingsError(msg)
        missing = [var for var, value in (("SLUICE_SASL_USERNAME", settings.sasl_username),
                                          ("SLUICE_SASL_PASSWORD", settings.sasl_password)) if not value]
        if missing:
            msg = f"SLUICE_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}"
            raise SettingsError(msg)
    else:
        given = [var for var, value in (("SLUICE_SASL_MECHANISM", settings.sasl_mechanism),
                                        ("SLUICE_SASL_USERNAME", settings.sasl_username),
                                        ("SLUICE_SASL_PASSWORD", settings.sasl_password)) if value]
        if given:
            msg = (
                f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but SLUICE_SECURITY_PROTOCOL is "
                f"{protocol}, which sends no credentials; set it to SASL_SSL (or SASL_PLAINTEXT), or unset them"
            )
            raise SettingsError(msg)
    if settings.ssl_ca_file:
        if not protocol.endswith("SSL"):
            msg = f"SLUICE_SSL_CA_FILE is set but SLUICE_SECURITY_PROTOCOL is {protocol}; set it to SSL or SASL_SSL, or unset the CA file"
            raise SettingsError(msg)
        if not Path(settings.ssl_ca_file).is_file():
            msg = f"SLUICE_SSL_CA_FILE={settings.ssl_ca_file} does not exist; give the PEM file of the CA that signed the brokers' certificates"
            raise SettingsError(msg)
    return protocol, mechanism


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """The security part of a confluent-kafka client config ({} for PLAINTEXT).

    TLS verifies the broker's certificate and host name (librdkafka's
    defaults), against SLUICE_SSL_CA_FILE or, without it, the system's CA
    store ("probe").
    """
    protocol, mechanism = checked_protocol(settings)
    if protocol == "PLAINTEXT":
        return {}
    config = {"security.protocol": protocol}
    if protocol.endswith("SSL"):
        config["ssl.ca.location"] = str(settings.ssl_ca_file) if settings.ssl_ca_file else "probe"
    if mechanism is not None:
        config.update({
            "sasl.mechanism": mechanism,
            "sasl.username": settings.sasl_username,
            "sasl.password": settings.sasl_password,
        })
    return config


def redacted(config: dict) -> dict:
    """A client config fit for a log line or an error message."""
    return {k: ("***" if "password" in k else v) for k, v in config.items()}


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context that verifies the broker (certificate and host name) against the CA file or the system store."""
    return ssl.create_default_context(cafile=str(settings.ssl_ca_file) if settings.ssl_ca_file else None)

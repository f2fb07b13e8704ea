"""Which client errors mean the cluster refused this client (exit 2) rather than an outage (retry)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from common.kafka_clients import KafkaAccessRefused, _refusal, _refused

SASL = ("sasl_ssl://10.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during "
        "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 313ms in state AUTH_REQ)")


def test_authentication_and_tls_failures_are_refusals_and_outages_are_not() -> None:
    assert _refused(KafkaError(KafkaError._AUTHENTICATION, SASL))
    assert _refused(KafkaError(KafkaError._SSL, "ssl://b:9093/bootstrap: SSL handshake failed: certificate verify failed"))
    # A broker rejecting the client's certificate: a TLS alert, reported as a transport failure.
    assert _refused(KafkaError(KafkaError._TRANSPORT, "ssl://b:9093/bootstrap: Receive failed: error:0A000412:"
                                                      "SSL routines::ssl/tls alert bad certificate"))
    assert not _refused(KafkaError(KafkaError._TRANSPORT, "b:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: "
                                                          "Connection refused"))
    assert not _refused(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert not _refused(KafkaError(KafkaError._TRANSPORT, "ssl://b:9093/bootstrap: SSL transport error: "
                                                          "error:0A000126:SSL routines::unexpected eof while reading"))


def test_a_refusal_names_the_cause_and_the_security_settings_never_their_values() -> None:
    config = {"bootstrap.servers": "10.0.0.1:9094", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
              "sasl.username": "lis", "sasl.password": "hunter2-secret", "linger.ms": "5"}
    error = _refusal(config, KafkaError(KafkaError._AUTHENTICATION, SASL))
    assert isinstance(error, KafkaAccessRefused)
    text = str(error)
    assert "Kafka at 10.0.0.1:9094 refused this client" in text and "invalid credentials" in text
    assert "KAFKA_SASL_PASSWORD" in text and "KAFKA_SECURITY_PROTOCOL" in text and "KAFKA_LINGER_MS" not in text
    assert "hunter2-secret" not in text and "after 313ms" not in text

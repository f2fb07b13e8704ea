"""Settings of the LIS source connector (environment variables, see ``common.config``).

Two input modes share one task: ``LIS_MODE=fhir`` polls a FHIR R4 server,
``LIS_MODE=hl7-mllp`` listens for HL7 v2 ORU^R01 over MLLP. Secrets
(``FHIR_AUTH_TOKEN``, ``FHIR_PASSWORD``) can come from files via ``*_FILE``.
"""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common import SourceSettings
from common.config import TimeZoneName

_PRODUCER_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
# The context headers of a dead letter (stack trace, message, ids) and the record's framing.
_DEAD_LETTER_HEADROOM = 16 * 1024


class LisSettings(SourceSettings):
    """Where the LIS is, how to read it and which topics the events go to."""

    lis_mode: Literal["fhir", "hl7-mllp"] = Field(..., description="fhir | hl7-mllp")
    lis_name: str = Field("lis", min_length=1, description="source system id; part of every event id")

    fhir_base_url: str | None = Field(None, description="FHIR R4 base, e.g. https://lis.example/fhir")
    fhir_auth_token: str | None = Field(None, description="bearer token (secret)")
    fhir_username: str | None = Field(None, description="basic auth user")
    fhir_password: str | None = Field(None, description="basic auth password (secret)")
    fhir_page_size: int = Field(1000, ge=1, le=100_000, description="_count per page (servers may cap it)")
    fhir_overlap_seconds: float = Field(300.0, ge=0, description="re-read window for late commits and clock skew")
    fhir_poll_interval_ms: int = Field(5000, ge=0, description="pause after the last page of a poll")
    fhir_timeout_s: float = Field(30.0, gt=0, description="connect/read timeout per request")
    fhir_request_deadline_s: float = Field(60.0, gt=0, description="deadline per request, connect to last byte")
    fhir_start_time: str | None = Field(None, description="ISO instant to start from when there is no offset")
    fhir_slice_seconds: int = Field(600, ge=1, description="with TASKS_MAX > 1: length of the lastUpdated windows "
                                                            "dealt to the tasks in turn")

    mllp_host: str = Field("127.0.0.1", description="listen address")
    mllp_port: int = Field(2575, ge=0, le=65535)
    hl7_encoding: str = Field("utf-8", description="character encoding of HL7 messages (e.g. latin-1, cp1252)")
    hl7_time_zone: TimeZoneName = Field("UTC", description="IANA zone of HL7 times that carry no offset")
    hl7_archive_dir: str | None = Field(None, description="per-day archive of received messages; needed for replay")
    hl7_dedup_window: int = Field(2000, ge=1, description="recent MSH-10 per sender kept for de-duplication")
    hl7_max_batch: int = Field(500, ge=1, description="messages per poll batch (one Kafka transaction)")
    mllp_max_message_bytes: int | None = Field(
        None, ge=1024, le=1 << 30, description="MLLP frame cap; unset = the largest message the producer can send")
    mllp_read_timeout_ms: int = Field(60_000, ge=100, description="an incomplete frame is closed after this long")
    mllp_idle_timeout_ms: int = Field(600_000, ge=100, description="a connection with nothing in flight is closed")
    mllp_max_connections: int = Field(100, ge=1, le=10_000, description="open connections; the longest idle makes room")
    mllp_peer_max_rejects: int = Field(20, ge=1, description="rejected messages in a row before a peer is disconnected")

    patient_id_type: str = Field("MR", description="identifier type code of the patient id (PID-3.5, FHIR type)")
    patient_id_system: str | None = Field(
        None, description="if set, pick the patient id by assigning authority (PID-3.4 namespace or universal id) / "
                          "FHIR identifier.system instead of by PATIENT_ID_TYPE")

    results_topic: str = "lab-results"
    reports_topic: str = "lab-reports"
    patients_topic: str = "patients"

    def kafka_message_limit(self) -> int:
        """The largest HL7 message a Kafka record can carry: the producer's ``message.max.bytes``
        (``KAFKA_MESSAGE_MAX_BYTES``, librdkafka's default 1000000) less room for the dead-letter
        headers, so that even a refused message's dead letter is one the producer sends."""
        limit = int(self.kafka_properties().get("message.max.bytes", _PRODUCER_MESSAGE_MAX_BYTES))
        return max(limit // 2, limit - _DEAD_LETTER_HEADROOM)

    def mllp_frame_cap(self) -> int:
        """Bytes of one MLLP frame held in memory: ``MLLP_MAX_MESSAGE_BYTES``, else the Kafka limit."""
        return self.mllp_max_message_bytes or self.kafka_message_limit()

    @field_validator("hl7_encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown character encoding") from None
        return value


    @field_validator("fhir_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _mode_needs(self) -> LisSettings:
        if self.lis_mode == "fhir" and not self.fhir_base_url:
            raise ValueError("FHIR_BASE_URL is required when LIS_MODE=fhir")
        if self.fhir_auth_token and (self.fhir_username or self.fhir_password):
            raise ValueError("set either FHIR_AUTH_TOKEN or FHIR_USERNAME/FHIR_PASSWORD, not both")
        if bool(self.fhir_username) != bool(self.fhir_password):
            raise ValueError("FHIR_USERNAME and FHIR_PASSWORD go together")
        return self

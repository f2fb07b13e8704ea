from __future__ import annotations

import pytest

from common.config import load_settings
from common.errors import ConfigError
from connectors.sink_billing.connector import CONNECTOR, LAB_REPORT
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST, BillingSettings


def test_defaults_run_embedded_with_the_example_price_list() -> None:
    settings = load_settings(BillingSettings, {})
    assert settings.topic_list == ["lab-reports"]
    assert settings.billing_database_url == "sqlite:///billing.db"
    assert settings.billing_price_list == EXAMPLE_PRICE_LIST
    assert settings.billing_migrate_on_start is True
    assert settings.billing_write_method == "copy"


@pytest.mark.parametrize("url", ["not-a-url", "mysql://u@h/db"])
def test_a_bad_database_url_names_the_variable_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(BillingSettings, {"BILLING_DATABASE_URL": url})
    assert caught.value.problems[0].startswith("BILLING_DATABASE_URL:")
    assert url not in str(caught.value)


def test_postgres_url_and_write_method_from_the_environment() -> None:
    settings = load_settings(BillingSettings, {
        "BILLING_DATABASE_URL": "postgresql+psycopg://billing:secret@db:5432/billing",
        "BILLING_WRITE_METHOD": "multirow", "BILLING_MIGRATE_ON_START": "false", "TOPICS": "a,b",
    })
    assert settings.billing_write_method == "multirow" and not settings.billing_migrate_on_start
    assert "secret" not in str(settings.redacted())


def test_connector_reads_every_configured_topic_as_lab_report() -> None:
    assert CONNECTOR.name == "sink-billing" and CONNECTOR.kind == "sink" and CONNECTOR.migrate is not None
    assert CONNECTOR.reader_schema("lab-reports") == LAB_REPORT
    assert CONNECTOR.reader_schema("lab-reports-replay") == LAB_REPORT

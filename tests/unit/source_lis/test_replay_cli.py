"""The replay command line: windows, connector names, argument errors."""

from __future__ import annotations

import pytest

from connectors.source_lis.replay import main, replay_spec
from connectors.source_lis.window import ReplayWindow


def test_window_gets_its_own_connector_name() -> None:
    window = ReplayWindow.parse("2026-01-01T00:00:00Z", "2026-02-01", ["lab-reports"])
    assert window.connector_name() == "source-lis-replay-20260101T000000Z-20260201T000000Z-lab-reports"
    assert replay_spec(window).name == window.connector_name()
    open_ended = ReplayWindow.parse("2026-01-01T00:00:00+01:00", None)
    assert open_ended.connector_name() == "source-lis-replay-20251231T230000Z-now"


def test_bad_window_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--since", "2026-02-01", "--until", "2026-01-01"]) == 2
    assert "--until must be after --since" in capsys.readouterr().err


def test_missing_settings_are_reported(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LIS_MODE", raising=False)
    assert main(["--since", "2026-01-01"]) == 2
    assert "LIS_MODE" in capsys.readouterr().err


def test_unknown_topic_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIS_MODE", "hl7-mllp")
    assert main(["--since", "2026-01-01", "--topic", "billing-events"]) == 2
    assert "--topic must be one of" in capsys.readouterr().err

"""The local SMS and e-mail provider server speaks Twilio's and SendGrid's APIs and plays its scripted faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.providers import ProviderServer, start_providers

SMS_PATH = "/2010-04-01/Accounts/ACtest/Messages.json"


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with start_providers() as running:
        yield running


@pytest.fixture
def providers(server: ProviderServer) -> ProviderServer:
    server.reset()
    return server


@pytest.fixture
def client(providers: ProviderServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=providers.url, timeout=5) as http:
        yield http


def send_sms(client: httpx.Client, to: str = "+15550001111", key: str | None = None,
             auth: tuple[str, str] = ("ACtest", "test-token"), **form: str) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    data = {"To": to, "From": "+15559990000", "Body": "Your results are ready", **form}
    return client.post(SMS_PATH, data={k: v for k, v in data.items() if v}, auth=auth, headers=headers)


def send_email(client: httpx.Client, to: str = "pat@example.org", key: str | None = None,
               api_key: str = "SG.test", **overrides: Any) -> httpx.Response:
    mail = {"personalizations": [{"to": [{"email": to}]}], "from": {"email": "lab@example.org"},
            "subject": "Your report", "content": [{"type": "text/plain", "value": "Your report is ready"}],
            **overrides}
    headers = {"Authorization": f"Bearer {api_key}", **({"Idempotency-Key": key} if key else {})}
    return client.post("/v3/mail/send", json=mail, headers=headers)


def test_twilio_send_answers_201_with_a_message_sid_and_stores_the_message(
        providers: ProviderServer, client: httpx.Client) -> None:
    response = send_sms(client)
    assert response.status_code == 201
    body = response.json()
    assert body["sid"].startswith("SM") and len(body["sid"]) == 34
    assert (body["status"], body["to"], body["from"], body["account_sid"]) == (
        "queued", "+15550001111", "+15559990000", "ACtest")
    [stored] = providers.messages()
    assert stored["channel"] == "sms" and stored["provider_id"] == body["sid"]
    assert stored["body"] == "Your results are ready" and stored["subject"] is None
    assert abs(stored["received_at"] - time.time()) < 5
    assert providers.stats()["accepted"] == 1


def test_messaging_service_sid_may_replace_from(providers: ProviderServer, client: httpx.Client) -> None:
    response = send_sms(client, From="", MessagingServiceSid="MG123")
    assert response.status_code == 201
    assert providers.messages()[0]["from"] == "MG123"


def test_sendgrid_send_answers_202_with_an_x_message_id_and_no_body(
        providers: ProviderServer, client: httpx.Client) -> None:
    response = send_email(client)
    assert response.status_code == 202 and response.content == b""
    [stored] = providers.messages(channel="email")
    assert stored["provider_id"] == response.headers["X-Message-Id"]
    assert (stored["to"], stored["from"], stored["subject"], stored["body"]) == (
        "pat@example.org", "lab@example.org", "Your report", "Your report is ready")
    assert providers.messages(channel="sms") == []


def test_wrong_credentials_get_401_in_each_providers_error_shape(
        providers: ProviderServer, client: httpx.Client) -> None:
    sms = send_sms(client, auth=("ACtest", "wrong"))
    assert sms.status_code == 401
    assert sms.json() == {"code": 20003, "message": "Authenticate",
                          "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}
    email = send_email(client, api_key="SG.wrong")
    assert email.status_code == 401 and email.json()["errors"][0]["help"] is None
    assert providers.messages() == []
    assert providers.stats()["rejected"] == 2


def test_missing_fields_get_the_providers_validation_errors(client: httpx.Client) -> None:
    assert send_sms(client, To="").json()["code"] == 21604
    assert send_sms(client, Body="").json()["code"] == 21602
    missing_subject = send_email(client, subject=None)
    assert missing_subject.status_code == 400
    assert missing_subject.json()["errors"][0]["field"] == "subject"


def test_a_repeated_idempotency_key_replays_the_original_response_and_stores_one_message(
        providers: ProviderServer, client: httpx.Client) -> None:
    first, again = send_sms(client, key="notif-1"), send_sms(client, key="notif-1")
    assert again.status_code == 201 and again.content == first.content
    email, email_again = send_email(client, key="notif-1"), send_email(client, key="notif-1")
    assert email_again.headers["X-Message-Id"] == email.headers["X-Message-Id"]
    assert send_sms(client).json()["sid"] != send_sms(client).json()["sid"]  # no key: always new
    assert len(providers.messages()) == 4
    assert providers.stats()["duplicates_suppressed"] == 2


def test_429_fault_answers_count_times_with_retry_after_then_stops(
        providers: ProviderServer, client: httpx.Client) -> None:
    providers.faults([{"channel": "sms", "status": 429, "count": 2, "retry_after": 1.5},
                      {"channel": "email", "status": 429, "count": 1, "retry_after": 30}])
    throttled = [send_sms(client), send_sms(client)]
    assert [r.status_code for r in throttled] == [429, 429]
    assert throttled[0].json()["code"] == 20429 and throttled[0].headers["Retry-After"] == "1.5"
    assert send_sms(client).status_code == 201
    email = send_email(client)
    assert email.status_code == 429
    assert abs(int(email.headers["X-RateLimit-Reset"]) - (time.time() + 30)) <= 2
    assert send_email(client).status_code == 202
    assert providers.stats()["throttled"] == 3 and len(providers.messages()) == 2


def test_5xx_faults_answer_count_times_without_storing(providers: ProviderServer, client: httpx.Client) -> None:
    providers.faults([{"channel": "sms", "status": 500, "count": 1}, {"channel": "email", "status": 503, "count": 1}])
    failed = send_sms(client)
    assert failed.status_code == 500 and failed.json()["status"] == 500
    assert send_email(client).status_code == 503
    assert send_sms(client).status_code == 201 and send_email(client).status_code == 202
    assert providers.stats()["errors_5xx"] == 2 and len(providers.messages()) == 2


def test_delay_fault_times_the_client_out_yet_the_message_is_sent(
        providers: ProviderServer, client: httpx.Client) -> None:
    providers.faults([{"delay": 0.6, "count": 1}])
    with pytest.raises(httpx.ReadTimeout):
        client.post(SMS_PATH, data={"To": "+15550001111", "From": "+1555", "Body": "late"},
                    auth=("ACtest", "test-token"), timeout=0.2)
    started = time.monotonic()
    assert send_sms(client).status_code == 201
    assert time.monotonic() - started < 0.3
    time.sleep(0.6)
    assert sorted(m["body"] for m in providers.messages()) == ["Your results are ready", "late"]


def test_permanent_fault_rejects_one_recipient_every_time(providers: ProviderServer, client: httpx.Client) -> None:
    providers.faults([{"code": 21610, "to": "+15550000001"}, {"code": 21614, "to": "+15550000002"},
                      {"status": 400, "channel": "email", "to": "gone@example.org"}])
    for _ in range(3):
        opted_out = send_sms(client, to="+15550000001")
        assert opted_out.status_code == 400
        assert opted_out.json() == {"code": 21610, "message": "Attempt to send to unsubscribed recipient",
                                    "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400}
    assert send_sms(client, to="+15550000002").json()["code"] == 21614
    bounced = send_email(client, to="gone@example.org")
    assert bounced.status_code == 400 and bounced.json()["errors"][0]["field"] == "personalizations.0.to.0.email"
    assert send_sms(client).status_code == 201 and send_email(client).status_code == 202
    assert [m["to"] for m in providers.messages()] == ["+15550001111", "pat@example.org"]


def test_rate_limit_answers_429_beyond_r_requests_per_second(providers: ProviderServer, client: httpx.Client) -> None:
    providers.faults([{"channel": "sms", "rate_limit": 5}])
    started = time.monotonic()
    answers = [send_sms(client) for _ in range(20)]
    elapsed = time.monotonic() - started
    accepted = sum(r.status_code == 201 for r in answers)
    assert 5 <= accepted <= 5 + int(elapsed * 5) + 1
    refused = [r for r in answers if r.status_code == 429]
    assert refused and all(0 < float(r.headers["Retry-After"]) <= 0.2 for r in refused)
    assert send_email(client).status_code == 202  # the limit is per channel
    time.sleep(float(refused[-1].headers["Retry-After"]))
    assert send_sms(client).status_code == 201


def test_kill_pid_fault_stores_the_message_kills_the_process_and_drops_the_connection(
        providers: ProviderServer, client: httpx.Client) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        providers.faults([{"kill_pid": sleeper.pid, "signal": 9, "after": 1}])
        assert send_sms(client, key="first").status_code == 201
        assert sleeper.poll() is None
        with pytest.raises(httpx.RemoteProtocolError):
            send_sms(client, key="second")
        assert sleeper.wait(5) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [m["idempotency_key"] for m in providers.messages()] == ["first", "second"]
    # The restarted sender retries with the same key and learns the message was sent.
    retry = send_sms(client, key="second")
    assert retry.status_code == 201 and retry.json()["sid"] == providers.messages()[1]["provider_id"]
    assert send_sms(client, key="third").status_code == 201  # count 1: the rule is spent


def test_bad_fault_rules_are_refused(providers: ProviderServer) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        providers.faults([{"status": 429, "cuont": 2}])
    with pytest.raises(httpx.HTTPStatusError):
        providers.faults([{"channel": "fax", "status": 500}])


def test_64_concurrent_keep_alive_requests_are_all_answered(providers: ProviderServer) -> None:
    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=providers.url, limits=limits, auth=("ACtest", "test-token")) as http:
            async def one(i: int) -> int:
                data = {"To": f"+1555000{i:04d}", "From": "+15559990000", "Body": "x"}
                return (await http.post(SMS_PATH, data=data)).status_code
            return await asyncio.gather(*(one(i) for i in range(256)))

    assert asyncio.run(burst()) == [201] * 256
    assert providers.stats()["accepted"] == 256


def test_reset_clears_messages_stats_and_faults(providers: ProviderServer, client: httpx.Client) -> None:
    providers.faults([{"status": 503}])
    assert send_sms(client).status_code == 503
    providers.reset()
    assert send_sms(client).status_code == 201
    assert providers.stats() == {"requests": 1, "accepted": 1, "rejected": 0, "throttled": 0, "errors_5xx": 0,
                                 "duplicates_suppressed": 0}


def is_running(pid: int) -> bool:
    try:  # an orphan's zombie lingers where PID 1 does not reap: it counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_server_outlives_neither_stop_nor_a_killed_test_run() -> None:
    stopped = start_providers()
    stopped.stop()
    assert stopped.process is not None and stopped.process.poll() is not None

    script = ("import json, sys, time\nfrom devstack.providers import start_providers\n"
              "s = start_providers()\nprint(json.dumps(s.process.pid), flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[3])
    assert parent.stdout is not None
    server_pid = json.loads(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not is_running(server_pid):
            return
        time.sleep(0.1)
    os.kill(server_pid, signal.SIGKILL)
    pytest.fail("the provider server outlived its killed parent")

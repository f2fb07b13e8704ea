"""Notification templates: minimum-necessary content, one SMS segment, opt-in fields, sandbox, fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.sink_notify.gsm7 import SMS_SEGMENT_SEPTETS, gsm7_septets
from connectors.sink_notify.templates import (
    CHANNELS, KINDS, OPT_IN_FIELDS, REFERENCE_LENGTH, RenderedMessage, TemplateError, Templates,
)

LAB = "Northside Community Diagnostic Lab, Inc."  # the longest lab name NOTIFY_LAB_NAME allows
PORTAL = "https://results.northside-diagnostic.org"  # the longest NOTIFY_PORTAL_URL
MAX_REFERENCE = "ZZZZ-ZZZZZ"
SHIPPED = [(language, kind, channel) for language in ("en", "es") for kind in KINDS for channel in CHANNELS]
PATIENT_KINDS = ("results_ready", "results_updated")
CANARIES = {
    "test_names": ["CANARY-TEST-NAME"],
    "patient_first_name": "CANARY-NAME",
    "accessions": ["CANARY-ACCESSION"],
    "ordering_provider_id": "CANARY-PROVIDER",
}


def _text(message: RenderedMessage) -> str:
    return f"{message.subject or ''}\n{message.body}"


def _operator(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source, encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(lab_name=LAB, portal_url=PORTAL)


def test_the_worst_case_values_are_at_their_limits() -> None:
    assert len(LAB) == len(PORTAL) == 40
    assert len(MAX_REFERENCE) == REFERENCE_LENGTH


def test_en_and_es_ship_every_kind_and_channel(templates: Templates) -> None:
    assert templates.languages() == ["en", "es"]
    shipped = Path(__file__).parents[3] / "connectors" / "sink_notify" / "templates"
    assert sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*.j2")) == sorted(
        f"{language}/{kind}.{channel}.j2" for language, kind, channel in SHIPPED)


@pytest.mark.parametrize("report_count", [1, 99])
@pytest.mark.parametrize(("language", "kind", "channel"), SHIPPED)
def test_every_shipped_template_renders_and_every_sms_fits_one_gsm7_segment(
        templates: Templates, language: str, kind: str, channel: str, report_count: int) -> None:
    extra = {field: CANARIES[field] for field in templates.fields(kind, channel, language)}
    message = templates.render(kind, channel, language, reference=MAX_REFERENCE, report_count=report_count,
                               extra=extra)
    assert MAX_REFERENCE in message.body
    assert LAB in message.body
    if channel == "sms":
        assert message.subject is None
        septets = gsm7_septets(message.body)
        assert septets is not None, "an SMS with a non-GSM-7 character goes as UCS-2 (70 characters)"
        assert septets <= SMS_SEGMENT_SEPTETS
    else:
        assert message.subject and "\n" not in message.subject
        assert message.body == message.body.strip()
    if kind in PATIENT_KINDS:  # where to log in and how to opt out, in every patient message
        assert PORTAL in message.body
        assert "STOP" in message.body if channel == "sms" else PORTAL in message.body.split("\n")[-1]


@pytest.mark.parametrize(("language", "kind", "channel"), SHIPPED)
def test_phi_canaries_appear_only_where_the_template_declared_the_field(
        templates: Templates, language: str, kind: str, channel: str) -> None:
    declared = templates.fields(kind, channel, language)
    text = _text(templates.render(kind, channel, language, reference="R-1", extra=CANARIES))
    for field, canary in CANARIES.items():
        marker = canary[0] if isinstance(canary, list) else canary
        assert (marker in text) == (field in declared), field
    assert declared == (frozenset() if kind in PATIENT_KINDS else {"accessions", "ordering_provider_id"})


def test_plural_wording_counts_reports(templates: Templates) -> None:
    assert "your 3 lab reports are ready" in templates.render("results_ready", "sms", "en", reference="R-1",
                                                              report_count=3).body
    assert "your lab results are ready" in templates.render("results_ready", "sms", "en", reference="R-1").body


def test_the_length_check_uses_the_configured_lab_name() -> None:
    with pytest.raises(TemplateError, match=r"results_ready\.sms\.j2: the SMS needs \d+ GSM-7 septets"):
        Templates(lab_name="The Northside Community Diagnostic Laboratory", portal_url=PORTAL)
    with pytest.raises(TemplateError, match="outside GSM-7"):
        Templates(lab_name="Laboratorio Clínico", portal_url=PORTAL)


def test_an_undeclared_opt_in_field_fails_at_construction(tmp_path: Path) -> None:
    directory = _operator(tmp_path, {"en/results_ready.email.j2": "Subject: Ready\n\nYour {{ test_names }} results."})
    with pytest.raises(TemplateError, match=r"en/results_ready\.email\.j2: uses test_names"):
        Templates(lab_name=LAB, portal_url=PORTAL, directory=directory)


def test_a_declared_opt_in_field_is_rendered(tmp_path: Path) -> None:
    directory = _operator(tmp_path, {"en/results_ready.email.j2": "{# fields: test_names #}\nSubject: Ready\n\n"
                                     "Your {{ test_names|join(', ') }} results are ready at {{ portal_url }}."})
    templates = Templates(lab_name=LAB, portal_url=PORTAL, directory=directory)
    assert templates.fields("results_ready", "email", "en") == {"test_names"}
    message = templates.render("results_ready", "email", "en", reference="R-1",
                               extra={"test_names": ["Lipid panel", "TSH"], "patient_first_name": "Ana"})
    assert message == RenderedMessage("Ready", f"Your Lipid panel, TSH results are ready at {PORTAL}.")
    assert "STOP" in templates.render("results_ready", "sms", "en", reference="R-1").body  # the rest is shipped


@pytest.mark.parametrize(("source", "problem"), [
    ("{# fields: diagnosis #}\n{{ lab_name }}", "declares unknown fields diagnosis"),
    ("{{ lab_name }} {{ patient_id }}", "uses patient_id"),
    ("{{ lab_name }} {% if %}", "line 1"),
    ("{{ lab_name }}: " + "your results are ready " * 6, "septets"),
    ("{{ lab_name }}: sus resultados están listos", "outside GSM-7"),
])
def test_an_invalid_operator_sms_template_fails_at_construction_naming_the_file(
        tmp_path: Path, source: str, problem: str) -> None:
    directory = _operator(tmp_path, {"en/results_ready.sms.j2": source})
    with pytest.raises(TemplateError, match=problem) as caught:
        Templates(lab_name=LAB, portal_url=PORTAL, directory=directory)
    assert "en/results_ready.sms.j2" in str(caught.value)


@pytest.mark.parametrize(("name", "source"), [
    ("en/results_ready.email.j2", "Your results are ready."),  # no Subject line
    ("en/result_ready.sms.j2", "{{ lab_name }}"),  # a typo in the name would silently never be used
])
def test_a_malformed_operator_file_fails_at_construction(tmp_path: Path, name: str, source: str) -> None:
    with pytest.raises(TemplateError, match=name.replace(".", r"\.")):
        Templates(lab_name=LAB, portal_url=PORTAL, directory=_operator(tmp_path, {name: source}))


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}", "{{ lab_name.__class__.__subclasses__() }}",
                                    "{{ lab_name.__init__.__globals__ }}"])
def test_the_sandbox_refuses_python_internals(tmp_path: Path, source: str) -> None:
    directory = _operator(tmp_path, {"en/results_updated.sms.j2": source})
    with pytest.raises(TemplateError, match=r"results_updated\.sms\.j2: line 1: rendering failed") as caught:
        Templates(lab_name=LAB, portal_url=PORTAL, directory=directory)
    assert "SecurityError" in str(caught.value) and "<class" not in str(caught.value)


def test_operator_data_too_long_for_an_sms_fails_without_quoting_it(tmp_path: Path) -> None:
    directory = _operator(tmp_path, {"en/results_ready.sms.j2":
                                     "{# fields: patient_first_name #}\n{{ lab_name }}: {{ patient_first_name }}, "
                                     "see {{ portal_url }} (ref {{ reference }})"})
    templates = Templates(lab_name=LAB, portal_url=PORTAL, directory=directory)
    name = "CANARY-" + "X" * 60
    with pytest.raises(TemplateError, match="septets") as caught:
        templates.render("results_ready", "sms", "en", reference="R-1", extra={"patient_first_name": name})
    assert "CANARY" not in str(caught.value) and LAB not in str(caught.value)
    with pytest.raises(TemplateError, match="patient_first_name"):  # declared but not loaded by the caller
        templates.render("results_ready", "sms", "en", reference="R-1")


def test_a_failing_operator_template_does_not_quote_its_data(tmp_path: Path) -> None:
    directory = _operator(tmp_path, {"en/results_ready.email.j2":
                                     "{# fields: test_names #}\nSubject: Ready\n\n{{ test_names[1] }}"})
    templates = Templates(lab_name=LAB, portal_url=PORTAL, directory=directory)
    with pytest.raises(TemplateError, match=r"results_ready\.email\.j2: line 4: rendering failed") as caught:
        templates.render("results_ready", "email", "en", reference="R-1", extra={"test_names": ["CANARY"]})
    assert "CANARY" not in str(caught.value)


@pytest.mark.parametrize(("language", "expected"), [
    ("es", "es"), ("es-MX", "es"), ("es_MX", "es"), ("ES", "es"), ("en-GB", "en"), ("fr", "en"), ("pt-BR", "en"),
])
def test_language_falls_back_to_the_base_language_then_the_default(
        templates: Templates, language: str, expected: str) -> None:
    assert templates.render("results_ready", "sms", language, reference="R-1") == templates.render(
        "results_ready", "sms", expected, reference="R-1")


def test_an_operator_regional_template_overrides_one_message_only(tmp_path: Path) -> None:
    directory = _operator(tmp_path, {"es-MX/results_ready.sms.j2": "{{ lab_name }}: ya tiene resultados en "
                                     "{{ portal_url }} (ref {{ reference }}). STOP para cancelar."})
    templates = Templates(lab_name=LAB, portal_url=PORTAL, directory=directory)
    assert templates.languages() == ["en", "es", "es-MX"]
    assert "ya tiene resultados" in templates.render("results_ready", "sms", "es-MX", reference="R-1").body
    assert templates.render("results_updated", "sms", "es-MX", reference="R-1") == templates.render(
        "results_updated", "sms", "es", reference="R-1")


def test_the_default_language_must_have_every_template() -> None:
    with pytest.raises(TemplateError, match=r"fr/results_ready\.sms\.j2"):
        Templates(lab_name=LAB, portal_url=PORTAL, default_language="fr")
    spanish = Templates(lab_name=LAB, portal_url=PORTAL, default_language="es")
    assert "Responda STOP" in spanish.render("results_ready", "sms", "fr", reference="R-1").body


def test_a_critical_alert_without_accessions_or_provider_still_renders(templates: Templates) -> None:
    message = templates.render("critical_alert", "sms", "en", reference="R-1",
                               extra={"accessions": [], "ordering_provider_id": None})
    assert message.body == f"{LAB} CRITICAL VALUE: call the lab now about ref R-1."
    assert templates.fields("critical_alert", "sms", "en") <= OPT_IN_FIELDS


@pytest.mark.parametrize("reference", ["", "lower-case", "ZZZZ-ZZZZZZ", "R 1"])
def test_a_reference_outside_the_contract_is_refused(templates: Templates, reference: str) -> None:
    with pytest.raises(ValueError, match="reference"):
        templates.render("results_ready", "sms", "en", reference=reference)

"""Message templates of the notification sink: sandboxed Jinja, one file per language, kind and channel.

Files are ``templates/<language>/<kind>.<channel>.j2`` (shipped: ``en`` and ``es``); an operator
directory with the same layout overrides them file by file. Patient messages say only that results
are ready or were updated, who sent them, where to log in and a short reference: no values, no test
names, no patient name (minimum necessary). Every template sees ``SAFE_FIELDS``; one that needs more
declares it on its first line, ``{# fields: test_names #}``, and only then gets it. The declaration
is checked against the variables the template uses when it is loaded.

SMS templates must fit one segment: 160 GSM-7 septets, GSM-7 characters only (else UCS-2, 70). At
construction every template is rendered for the worst case: the configured lab name and portal URL,
a reference of ``REFERENCE_LENGTH`` characters, report counts 1 and 99 and the opt-in values of
``WORST_CASE_EXTRA``. The shipped SMS templates fit with a lab name and a portal URL of up to 40
characters each (the limits of NOTIFY_LAB_NAME and NOTIFY_PORTAL_URL). Rendering checks again, since
operator data can be longer. E-mail templates start with ``Subject: ...`` and a blank line.

A ``TemplateError`` names the template file and the problem, never rendered text: operator templates
may render patient data.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from connectors.sink_notify.gsm7 import SMS_SEGMENT_SEPTETS, gsm7_septets

KINDS = ("results_ready", "results_updated", "critical_alert")
CHANNELS = ("sms", "email")
SAFE_FIELDS = frozenset({"lab_name", "portal_url", "reference", "report_count"})
OPT_IN_FIELDS = frozenset({"test_names", "patient_first_name", "accessions", "ordering_provider_id"})
REFERENCE_LENGTH = 10  # references are 1..10 characters: A-Z, 0-9 and '-'

# The longest opt-in values the caller passes: up to 5 test names of 30 characters, a first name of
# 20, up to 5 accessions of 20, a provider id of 20. Longer data fails at render, not at start.
WORST_CASE_EXTRA: Mapping[str, Any] = {
    "test_names": ["T" * 30] * 5,
    "patient_first_name": "N" * 20,
    "accessions": ["A" * 20] * 5,
    "ordering_provider_id": "P" * 20,
}

_SHIPPED = Path(__file__).parent / "templates"
_NAME = re.compile(r"(?P<language>[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*)/(?P<kind>\w+)\.(?P<channel>\w+)\.j2")
_DECLARATION = re.compile(r"\{#\s*fields:(?P<names>[^#]*)#\}")
_REFERENCE = re.compile(rf"[A-Z0-9-]{{1,{REFERENCE_LENGTH}}}")


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str | None  # e-mail only
    body: str


class TemplateError(Exception):
    """A template is missing, malformed, uses an undeclared field or does not fit its channel."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    template: jinja2.Template
    filename: str
    fields: frozenset[str]


class Templates:
    """The validated templates of one sink: render a message by kind, channel and language."""

    def __init__(self, *, lab_name: str, portal_url: str, directory: str | Path | None = None,
                 default_language: str = "en") -> None:
        self._safe = {"lab_name": lab_name, "portal_url": portal_url}
        self._default = default_language
        loaders = [FileSystemLoader(_SHIPPED)]
        if directory is not None:
            if not Path(directory).is_dir():
                raise TemplateError(f"template directory {directory} does not exist")
            loaders.insert(0, FileSystemLoader(directory))
        self._env = ImmutableSandboxedEnvironment(
            loader=ChoiceLoader(loaders), undefined=StrictUndefined, autoescape=False,
            keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)
        self._templates: dict[tuple[str, str, str], _Loaded] = {}
        for name in self._env.list_templates(extensions=["j2"]):
            match = _NAME.fullmatch(name)
            if not match or match["kind"] not in KINDS or match["channel"] not in CHANNELS:
                raise TemplateError(f"{name}: not <language>/<kind>.<channel>.j2 with kind one of "
                                    f"{', '.join(KINDS)} and channel one of {', '.join(CHANNELS)}")
            self._templates[(match["language"], match["kind"], match["channel"])] = self._load(name)
        missing = [f"{default_language}/{kind}.{channel}.j2" for kind in KINDS for channel in CHANNELS
                   if (default_language, kind, channel) not in self._templates]
        if missing:
            raise TemplateError(f"missing templates of the default language: {', '.join(missing)}")
        for (_, _, channel), loaded in self._templates.items():
            for report_count in (1, 99):  # singular and plural wording differ in length
                self._render(loaded, channel, "W" * REFERENCE_LENGTH, report_count, WORST_CASE_EXTRA)

    def render(self, kind: str, channel: str, language: str, *, reference: str, report_count: int = 1,
               extra: Mapping[str, Any] | None = None) -> RenderedMessage:
        """The message of ``kind`` for ``channel`` in ``language`` (or its fallback); ``extra`` holds opt-in fields."""
        if not _REFERENCE.fullmatch(reference):
            raise ValueError(f"a reference is 1 to {REFERENCE_LENGTH} characters A-Z, 0-9 and '-'")
        if report_count < 1:
            raise ValueError("report_count must be at least 1")
        return self._render(self._resolve(kind, channel, language), channel, reference, report_count, extra or {})

    def fields(self, kind: str, channel: str, language: str) -> frozenset[str]:
        """The opt-in fields the template declared: the caller loads only these."""
        return self._resolve(kind, channel, language).fields

    def languages(self) -> list[str]:
        return sorted({language for language, _, _ in self._templates})

    def _resolve(self, kind: str, channel: str, language: str) -> _Loaded:
        if kind not in KINDS or channel not in CHANNELS:
            raise ValueError(f"unknown message {kind}.{channel}")
        tag = language.replace("_", "-")
        for candidate in (tag, tag.split("-")[0].lower(), self._default):  # es-MX -> es -> default
            if (candidate, kind, channel) in self._templates:
                return self._templates[(candidate, kind, channel)]
        raise AssertionError("the default language has every template (checked at construction)")

    def _load(self, name: str) -> _Loaded:
        assert self._env.loader is not None
        source, filename, _ = self._env.loader.get_source(self._env, name)
        filename = filename or name
        try:
            used = meta.find_undeclared_variables(self._env.parse(source, name, filename))
            template = self._env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{filename}: line {exc.lineno}: {exc.message}") from None
        header = _DECLARATION.match(source)
        declared = frozenset(f.strip() for f in header["names"].split(",") if f.strip()) if header else frozenset()
        if unknown := declared - OPT_IN_FIELDS:
            raise TemplateError(f"{filename}: declares unknown fields {', '.join(sorted(unknown))}; "
                                f"opt-in fields are {', '.join(sorted(OPT_IN_FIELDS))}")
        if undeclared := used - SAFE_FIELDS - declared - self._env.globals.keys():
            raise TemplateError(f"{filename}: uses {', '.join(sorted(undeclared))}: always available are "
                                f"{', '.join(sorted(SAFE_FIELDS))}; opt-in fields ({', '.join(sorted(OPT_IN_FIELDS))}) "
                                "need a first line {# fields: name, ... #}")
        return _Loaded(template, filename, declared)

    def _render(self, loaded: _Loaded, channel: str, reference: str, report_count: int,
                extra: Mapping[str, Any]) -> RenderedMessage:
        if missing := loaded.fields - extra.keys():
            raise TemplateError(f"{loaded.filename}: declares {', '.join(sorted(missing))} but none was given")
        context = {**self._safe, "reference": reference, "report_count": report_count,
                   **{field: extra[field] for field in loaded.fields}}
        try:
            text = loaded.template.render(context)
        except Exception as exc:  # any failure of an operator template; its message may quote data
            raise TemplateError(f"{loaded.filename}{_line(exc, loaded.filename)}: rendering failed "
                                f"({type(exc).__name__})") from None
        text = "\n".join(line.rstrip() for line in text.rstrip().split("\n"))
        if channel == "email":
            return _email(text, loaded.filename)
        septets = gsm7_septets(text)
        if septets is None:
            raise TemplateError(f"{loaded.filename}: the SMS has characters outside GSM-7 (it would go as UCS-2)")
        if septets > SMS_SEGMENT_SEPTETS:
            raise TemplateError(f"{loaded.filename}: the SMS needs {septets} GSM-7 septets, "
                                f"more than one segment ({SMS_SEGMENT_SEPTETS})")
        return RenderedMessage(subject=None, body=text)


def _email(text: str, filename: str) -> RenderedMessage:
    lines = text.split("\n")
    subject = lines[0].removeprefix("Subject:").strip()
    if not lines[0].startswith("Subject:") or not subject or len(lines) < 3 or lines[1]:
        raise TemplateError(f"{filename}: an e-mail starts with 'Subject: ...', a blank line, then the body")
    if not subject.isprintable():  # a control character in a header could inject more headers
        raise TemplateError(f"{filename}: the subject has control characters")
    return RenderedMessage(subject=subject, body="\n".join(lines[2:]).lstrip("\n"))


def _line(exc: BaseException, filename: str) -> str:
    """Where in the template it failed: Jinja rewrites tracebacks to template lines."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == filename]
    return f": line {lines[-1]}" if lines else ""

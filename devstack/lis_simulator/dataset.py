"""A seeded, realistic-looking lab data set: patients, panels, report versions.

Each accession goes through versions the way a LIS publishes them: a share are
preliminary first and final later, some are corrected after the final, some are
cancelled; a few results are critical (HH/LL). Patients carry phone, e-mail,
per-channel consent (some opted out) and a time zone. Everything derives from the
seed, so tests can compute exactly which events the connector must produce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

# (LOINC, name, unit, low, high, decimals) from the domain reference table
ANALYTES = {
    "6690-2": ("WBC", "10*3/uL", 4.5, 11.0, 1), "789-8": ("RBC", "10*6/uL", 4.2, 5.9, 2),
    "718-7": ("Hemoglobin", "g/dL", 12.0, 17.5, 1), "4544-3": ("Hematocrit", "%", 36.0, 50.0, 1),
    "777-3": ("Platelets", "10*3/uL", 150.0, 400.0, 0), "2345-7": ("Glucose", "mg/dL", 70.0, 99.0, 0),
    "4548-4": ("HbA1c", "%", 4.0, 5.6, 1), "2093-3": ("Cholesterol", "mg/dL", None, 200.0, 0),
    "13457-7": ("LDL (calculated)", "mg/dL", None, 100.0, 0), "3016-3": ("TSH", "mIU/L", 0.4, 4.0, 2),
    "2823-3": ("Potassium", "mmol/L", 3.5, 5.1, 1),
}
PANELS = [
    ("58410-2", "CBC panel", ["6690-2", "789-8", "718-7", "4544-3", "777-3"]),
    ("57698-3", "Lipid panel", ["2093-3", "13457-7"]),
    ("2345-7", "Glucose", ["2345-7"]),
    ("4548-4", "HbA1c", ["4548-4"]),
    ("3016-3", "TSH", ["3016-3"]),
    ("2823-3", "Potassium", ["2823-3"]),
]
ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Phoenix",
         "Pacific/Honolulu"]
FAMILY = ["Smith", "Johnson", "O'Brien", "Garcia", "Nguyen", "Müller", "Kowalski", "Okafor", "Tanaka", "Dubois"]
GIVEN = ["Ana", "Ben", "Chloé", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "José"]


@dataclass(frozen=True)
class SimPatient:
    id: str
    mrn: str
    family: str
    given: str
    birth_date: str
    phone: str | None
    email: str | None
    sms_consent: bool
    email_consent: bool
    time_zone: str
    language: str
    updated_ms: int


@dataclass(frozen=True)
class SimResult:
    code: str
    name: str
    unit: str
    value: str
    low: float | None
    high: float | None
    flag: str | None
    status: str  # FHIR Observation.status
    note: str | None = None


@dataclass(frozen=True)
class SimReport:
    """One version of one report (accession)."""

    id: str
    accession: str
    patient: SimPatient
    code: str
    name: str
    status: str  # FHIR DiagnosticReport.status
    version: int
    updated_ms: int
    effective_ms: int
    provider: str
    results: tuple[SimResult, ...] = field(default_factory=tuple)

    @property
    def result_count(self) -> int:
        return len(self.results)


def _value(rng: random.Random, code: str, critical: bool) -> tuple[str, str | None]:
    name, unit, low, high, decimals = ANALYTES[code]
    lo = low if low is not None else high * 0.5
    if critical:
        x = (lo * 0.5) if rng.random() < 0.5 else high * 1.8
        flag = "LL" if x < lo else "HH"
    else:
        x = rng.uniform(lo * 0.85, high * 1.15)
        flag = "L" if x < lo else ("H" if x > high else "N")
    return f"{x:.{decimals}f}", flag


def generate(*, seed: int = 1, reports: int = 1000, patients: int | None = None, start_ms: int = 1_767_225_600_000,
             spacing_ms: int = 800, preliminary_share: float = 0.3, correction_share: float = 0.03,
             cancel_share: float = 0.02, critical_share: float = 0.01) -> list[SimReport]:
    """Report versions ordered by lastUpdated (several may share one timestamp, as on real servers)."""
    rng = random.Random(seed)
    n_patients = patients or max(1, reports // 3)
    people = []
    for i in range(n_patients):
        opted_out = rng.random() < 0.1
        people.append(SimPatient(
            id=f"pat-{i}", mrn=f"MRN{i:07d}", family=rng.choice(FAMILY), given=rng.choice(GIVEN),
            birth_date=f"{rng.randint(1940, 2010)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            phone=f"+1555{rng.randint(1000000, 9999999)}" if rng.random() < 0.9 else None,
            email=f"patient{i}@example.org" if rng.random() < 0.8 else None,
            sms_consent=not opted_out and rng.random() < 0.85, email_consent=not opted_out and rng.random() < 0.7,
            time_zone=rng.choice(ZONES), language="es" if rng.random() < 0.15 else "en", updated_ms=start_ms,
        ))
    versions: list[SimReport] = []
    t = start_ms
    for n in range(reports):
        # Analysers deliver in bursts: several reports often share one lastUpdated.
        if rng.random() > 0.3:
            t += rng.randint(0, spacing_ms * 2)
        panel_code, panel_name, codes = PANELS[rng.randrange(len(PANELS))] if rng.random() > 0.5 else PANELS[0]
        critical = rng.random() < critical_share
        results = []
        for code in codes:
            value, flag = _value(rng, code, critical and code == codes[0])
            name, unit, low, high, _ = ANALYTES[code]
            note = "Hemolysed sample & re-run; see \\comment\\" if rng.random() < 0.02 else None
            results.append(SimResult(code, name, unit, value, low, high, flag, "final", note))
        base = SimReport(id=f"dr-{n}", accession=f"ACC{n:08d}", patient=people[rng.randrange(n_patients)],
                         code=panel_code, name=panel_name, status="final", version=1, updated_ms=t,
                         effective_ms=t - 3_600_000, provider=f"NPI{rng.randint(1000000000, 1999999999)}",
                         results=tuple(results))
        chain: list[SimReport] = []
        roll = rng.random()
        if roll < cancel_share:
            chain.append(replace(base, status="cancelled", results=()))
        else:
            if rng.random() < preliminary_share:
                chain.append(replace(base, status="preliminary",
                                     results=tuple(replace(r, status="preliminary") for r in results)))
            chain.append(base)
            if rng.random() < correction_share:
                fixed = list(results)
                fixed[0] = replace(fixed[0], status="corrected", value=_value(rng, fixed[0].code, False)[0])
                chain.append(replace(base, status="corrected", results=tuple(fixed)))
        for i, version in enumerate(chain):
            versions.append(replace(version, version=i + 1, updated_ms=t + i * 600_000))
    versions.sort(key=lambda r: (r.updated_ms, r.id))
    return versions


def latest(versions: list[SimReport]) -> dict[str, SimReport]:
    """The current version of each report."""
    out: dict[str, SimReport] = {}
    for version in versions:
        current = out.get(version.id)
        if current is None or version.version > current.version:
            out[version.id] = version
    return out

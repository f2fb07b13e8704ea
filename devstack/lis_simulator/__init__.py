"""A LIS simulator: a FHIR R4 server and an HL7 v2 MLLP sender over a seeded data set.

    from devstack.lis_simulator import FhirSimulator, generate, latest
    sim = FhirSimulator(); sim.start(); sim.publish(generate(seed=1, reports=1000))
    sim.expected_event_ids("lis")   # what the connector must produce

    feed = Hl7Feed(generate(seed=2, reports=100)); send_all("127.0.0.1", port, feed.messages())
    expected_hl7_event_ids(feed.versions)
"""

from devstack.lis_simulator.dataset import SimPatient, SimReport, SimResult, generate, latest
from devstack.lis_simulator.fhir_server import FhirFaults, FhirSimulator
from devstack.lis_simulator.hl7_sender import (
    Hl7Faults,
    Hl7Feed,
    MllpSender,
    expected_hl7_event_ids,
    render_oru,
    send_all,
)

__all__ = [
    "FhirFaults", "FhirSimulator", "Hl7Faults", "Hl7Feed", "MllpSender", "SimPatient", "SimReport", "SimResult",
    "expected_hl7_event_ids", "generate", "latest", "render_oru", "send_all",
]

"""Validates FHIR R4 (4.0.1) DiagnosticReport JSON files with the fhir.resources package (an
independent implementation of the FHIR models); prints one JSON line per file with the fields
the test checks, or exits 1 naming the file and the rule it broke."""
import json
import sys

import fhir.resources
from fhir.resources.diagnosticreport import DiagnosticReport

assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__
STATUS = {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
          "cancelled", "entered-in-error", "unknown"}

for path in sys.argv[1:]:
    text = open(path, encoding="utf-8").read()
    try:
        report = DiagnosticReport.parse_raw(text)
    except Exception as e:  # pydantic's ValidationError names the field and the rule
        sys.exit(f"{path}: not a valid FHIR R4 DiagnosticReport: {e}")
    if report.status not in STATUS:
        sys.exit(f"{path}: status {report.status!r} is not in the R4 value set")
    contained = {r.id: r for r in (report.contained or [])}
    for ref in report.result or []:
        if not ref.reference.startswith("#") or ref.reference[1:] not in contained:
            sys.exit(f"{path}: result {ref.reference} does not resolve to a contained resource")
    observation = contained["probability"]
    print(json.dumps({
        "status": report.status,
        "code": report.code.coding[0].code,
        "subject_id": report.subject.identifier.value if report.subject else None,
        "study": report.imagingStudy[0].identifier.value,
        "accession": report.basedOn[0].identifier.value if report.basedOn else None,
        "sr_url": report.presentedForm[0].url if report.presentedForm else None,
        "conclusion": report.conclusion,
        "probability_percent": float(observation.valueQuantity.value),
        "interpretation": observation.interpretation[0].coding[0].code,
    }))

//! What a finished job tells the worklist: a FHIR R4 DiagnosticReport (for a RIS or FHIR
//! server) and a small JSON document for webhooks. Both are written next to the DICOM outputs
//! and sent by the outbox. The DiagnosticReport is `preliminary`: an AI result nobody has
//! verified. Codes: LOINC 18748-4 for the report, HL7 v2-0074 RAD for the category; the finding
//! itself has no verified standard concept (as in the SR), so it is given in words.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::{Value, json};

use super::sr::InstanceRef;
use super::{ResultSummary, person_name_text};
use crate::dicom_build::get_str;

/// Everything the two documents are made from.
pub struct NoticeInputs<'a> {
    /// The job's result.
    pub summary: &'a ResultSummary,
    /// The source's header: patient and study identifiers.
    pub header: &'a InMemDicomObject,
    /// The SR the node made, when it made one.
    pub sr: Option<&'a InstanceRef>,
    /// `[notify] sr_url` with `{study}`, `{series}`, `{instance}` placeholders.
    pub sr_url: &'a str,
    /// When the result was issued (RFC 3339, UTC).
    pub issued: &'a str,
}

impl NoticeInputs<'_> {
    fn text(&self, tag: dicom_core::Tag) -> String {
        get_str(self.header, tag).unwrap_or_default()
    }

    fn sr_link(&self) -> Option<String> {
        self.sr.map(|sr| {
            self.sr_url
                .replace("{study}", &self.summary.study_uid)
                .replace("{series}", &sr.series_uid)
                .replace("{instance}", &sr.sop_instance_uid)
        })
    }
}

/// The result in one paragraph, as the DiagnosticReport's conclusion and the webhook's text.
pub fn conclusion(summary: &ResultSummary) -> String {
    let mut text = format!(
        "{} (AI triage, unverified): probability {:.1} % at a decision threshold of {:.1} %.",
        summary.label,
        summary.probability * 100.0,
        summary.threshold * 100.0
    );
    if let (Some(slice), Some(p)) = (summary.hotspot_slice, summary.hotspot_lps) {
        text.push_str(&format!(
            " Hotspot on slice {} of the source series at ({:.1}, {:.1}, {:.1}) mm (LPS).",
            slice + 1,
            p[0],
            p[1],
            p[2]
        ));
    }
    text.push_str(&format!(" Model {} {}.", summary.model.name, summary.model.version));
    text
}

fn dicom_uid(uid: &str) -> Value {
    json!({ "system": "urn:dicom:uid", "value": format!("urn:oid:{uid}") })
}

fn percent(p: f64) -> Value {
    json!({
        "value": (p * 1000.0).round() / 10.0,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%"
    })
}

/// The FHIR R4 DiagnosticReport, with the probability as a contained Observation.
pub fn diagnostic_report(n: &NoticeInputs<'_>) -> Value {
    let s = n.summary;
    let (patient_id, issuer) = (n.text(tags::PATIENT_ID), n.text(tags::ISSUER_OF_PATIENT_ID));
    let patient_name = person_name_text(&n.text(tags::PATIENT_NAME));
    let accession = n.text(tags::ACCESSION_NUMBER);
    let interpretation = if s.suspected {
        ("POS", "Positive")
    } else {
        ("NEG", "Negative")
    };
    let observation = json!({
        "resourceType": "Observation",
        "id": "probability",
        "status": "preliminary",
        "code": { "text": "Model probability of focal cortical dysplasia type II" },
        "valueQuantity": percent(s.probability),
        "interpretation": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": interpretation.0,
            "display": interpretation.1
        }] }],
        "component": [{
            "code": { "text": "Decision threshold" },
            "valueQuantity": percent(s.threshold)
        }],
        "device": { "display": format!("{} {}", s.model.name, s.model.version) }
    });
    let mut report = json!({
        "resourceType": "DiagnosticReport",
        "contained": [observation],
        "status": "preliminary",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
            "code": "RAD",
            "display": "Radiology"
        }] }],
        "code": {
            "coding": [{ "system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study" }],
            "text": "AI triage for focal cortical dysplasia type II (MRI)"
        },
        "issued": n.issued,
        "imagingStudy": [{ "type": "ImagingStudy", "identifier": dicom_uid(&s.study_uid) }],
        "result": [{ "reference": "#probability" }],
        "conclusion": conclusion(s)
    });
    let fields = report.as_object_mut().expect("a JSON object");
    if let Some(sr) = n.sr {
        fields.insert("identifier".into(), json!([dicom_uid(&sr.sop_instance_uid)]));
    }
    if !accession.is_empty() {
        fields.insert(
            "basedOn".into(),
            json!([{ "type": "ServiceRequest", "identifier": {
                "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN" }] },
                "value": accession
            } }]),
        );
    }
    if !patient_id.is_empty() || !patient_name.is_empty() {
        let mut subject = json!({ "type": "Patient" });
        let subject_fields = subject.as_object_mut().expect("a JSON object");
        if !patient_id.is_empty() {
            let mut identifier = json!({ "value": patient_id });
            if !issuer.is_empty() {
                identifier["assigner"] = json!({ "display": issuer });
            }
            subject_fields.insert("identifier".into(), identifier);
        }
        if !patient_name.is_empty() {
            subject_fields.insert("display".into(), json!(patient_name));
        }
        fields.insert("subject".into(), subject);
    }
    let study_date = super::date_text(&n.text(tags::STUDY_DATE));
    if study_date.len() == 10 {
        fields.insert("effectiveDateTime".into(), json!(study_date));
    }
    if let Some(url) = n.sr_link() {
        fields.insert(
            "presentedForm".into(),
            json!([{ "contentType": "application/dicom", "url": url, "title": "DICOM Structured Report (AI, unverified)" }]),
        );
    }
    report
}

/// The webhook document: identifiers and the result, no patient name (webhooks often feed
/// chat or paging systems).
pub fn webhook(n: &NoticeInputs<'_>) -> Value {
    let s = n.summary;
    json!({
        "event": "fcdnode.result",
        "issued": n.issued,
        "label": s.label,
        "suspected": s.suspected,
        "probability": s.probability,
        "threshold": s.threshold,
        "hotspot": s.hotspot_slice.zip(s.hotspot_lps).map(|(slice, lps)| json!({ "slice": slice + 1, "lps_mm": lps })),
        "study_instance_uid": s.study_uid,
        "series_instance_uid": s.series_uid,
        "accession_number": n.text(tags::ACCESSION_NUMBER),
        "patient_id": n.text(tags::PATIENT_ID),
        "sr_sop_instance_uid": n.sr.map(|sr| sr.sop_instance_uid.clone()),
        "sr_url": n.sr_link(),
        "model": { "name": s.model.name, "version": s.model.version, "sha256": s.model.sha256 },
        "text": conclusion(s)
    })
}

#[cfg(test)]
mod tests {
    use dicom_core::VR;

    use super::*;
    use crate::dicom_build::put_str;
    use crate::report::ModelSummary;

    fn summary(suspected: bool) -> ResultSummary {
        ResultSummary {
            probability: 0.7254,
            label: crate::report::label(suspected).into(),
            suspected,
            threshold: 0.301,
            hotspot_lps: suspected.then_some([33.5, 89.5, -0.5]),
            hotspot_slice: suspected.then_some(80),
            study_uid: "1.2.3".into(),
            series_uid: "1.2.3.4".into(),
            model: ModelSummary {
                name: "demo".into(),
                version: "0.1.0".into(),
                sha256: "ab".into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn documents_carry_identifiers_and_the_result_in_words() {
        let mut header = InMemDicomObject::new_empty();
        put_str(&mut header, tags::PATIENT_ID, VR::LO, "PID-7");
        put_str(&mut header, tags::PATIENT_NAME, VR::PN, "Doe^Jane");
        put_str(&mut header, tags::ACCESSION_NUMBER, VR::SH, "ACC-1");
        put_str(&mut header, tags::STUDY_DATE, VR::DA, "20240101");
        let sr = InstanceRef {
            sop_class_uid: crate::report::sr::COMPREHENSIVE_3D_SR.into(),
            sop_instance_uid: "9.8.7".into(),
            series_uid: "9.8".into(),
            frames: 1,
        };
        let s = summary(true);
        let n = NoticeInputs {
            summary: &s,
            header: &header,
            sr: Some(&sr),
            sr_url: "https://pacs/wado/studies/{study}/series/{series}/instances/{instance}",
            issued: "2026-12-03T23:50:00.000Z",
        };
        let r = diagnostic_report(&n);
        assert_eq!(r["status"], "preliminary");
        assert_eq!(r["subject"]["identifier"]["value"], "PID-7");
        assert_eq!(r["subject"]["display"], "Doe, Jane");
        assert_eq!(r["basedOn"][0]["identifier"]["value"], "ACC-1");
        assert_eq!(r["effectiveDateTime"], "2024-01-01");
        assert_eq!(r["identifier"][0]["value"], "urn:oid:9.8.7");
        assert_eq!(r["imagingStudy"][0]["identifier"]["value"], "urn:oid:1.2.3");
        assert_eq!(
            r["presentedForm"][0]["url"],
            "https://pacs/wado/studies/1.2.3/series/9.8/instances/9.8.7"
        );
        assert_eq!(r["contained"][0]["valueQuantity"]["value"], 72.5);
        assert_eq!(r["contained"][0]["interpretation"][0]["coding"][0]["code"], "POS");
        let text = r["conclusion"].as_str().unwrap();
        assert!(
            text.starts_with("FCD type II suspected (AI triage, unverified): probability 72.5 %")
                && text.contains("slice 81"),
            "{text}"
        );
        let w = webhook(&n);
        assert_eq!(w["suspected"], true);
        assert_eq!(w["hotspot"]["slice"], 81);
        assert_eq!(w["sr_sop_instance_uid"], "9.8.7");
        assert!(!w.to_string().contains("Doe"), "no patient name in webhooks");

        let s = summary(false);
        let bare = InMemDicomObject::new_empty();
        let n = NoticeInputs {
            summary: &s,
            header: &bare,
            sr: None,
            sr_url: "urn:oid:{instance}",
            issued: "2026-12-03T23:50:00.000Z",
        };
        let r = diagnostic_report(&n);
        for absent in ["subject", "basedOn", "identifier", "presentedForm", "effectiveDateTime"] {
            assert!(r.get(absent).is_none(), "{absent}: {r}");
        }
        assert_eq!(r["contained"][0]["interpretation"][0]["coding"][0]["code"], "NEG");
        assert!(webhook(&n)["hotspot"].is_null());
    }
}

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::*;

fn source() -> Source {
    Source {
        source_id: "FCDNODE@ward-7".into(),
        site_id: Some("Site <A> & \"B\"".into()),
        ae_title: "FCDNODE".into(),
    }
}

fn events() -> Vec<AuditEvent> {
    let peer = Peer {
        ae_title: Some("MRI_3T".into()),
        address: "10.1.2.3".into(),
    };
    let transfer = StudyTransfer {
        study_uid: "1.2.826.0.1.3680043.8.498.1".into(),
        patient_id: "PID<&>\"7\"".into(),
        patient_name: "Müller^Jörg\nline two".into(),
        sop_classes: BTreeMap::from([("1.2.840.10008.5.1.4.1.1.4".to_owned(), 176)]),
        failed: None,
    };
    let mut failed = transfer.clone();
    failed.failed = Some((2, "0xA700 below [node] min_free_mb".into()));
    vec![
        AuditEvent::Application { started: true },
        AuditEvent::Application { started: false },
        AuditEvent::Instances {
            direction: Direction::Received,
            peer: peer.clone(),
            transfer,
        },
        AuditEvent::Instances {
            direction: Direction::Sent,
            peer: peer.clone(),
            transfer: failed,
        },
        AuditEvent::Security {
            alert: Alert::AssociationRejected,
            peer: Peer {
                ae_title: None,
                address: "::1".into(),
            },
            description: "called AE title \"X\" is not ours".into(),
        },
        AuditEvent::Security {
            alert: Alert::TlsHandshakeFailed,
            peer,
            description: "peer sent no certificate".into(),
        },
        AuditEvent::UserAuthentication {
            user: "admin<&>".into(),
            address: "10.1.2.4".into(),
            login: true,
            success: false,
        },
        AuditEvent::UserAuthentication {
            user: "admin".into(),
            address: "::1".into(),
            login: false,
            success: true,
        },
    ]
}

fn schema() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-message.rng")
}

/// jing's verdict on each file: (success, output).
fn jing(files: &[std::path::PathBuf]) -> (bool, String) {
    let out = Command::new("jing")
        .arg(schema())
        .args(files)
        .output()
        .expect("jing is required (Debian package jing, installed by make setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_event_is_one_line_that_validates_against_the_audit_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, event) in events().iter().enumerate() {
        let xml = event.to_xml(&source(), "2026-12-03T19:20:00.123Z");
        assert!(!xml.contains('\n'), "{xml}");
        let path = dir.path().join(format!("{i}.xml"));
        std::fs::write(&path, &xml).unwrap();
        files.push(path);
    }
    let (valid, said) = jing(&files);
    assert!(valid, "{said}");

    let received = std::fs::read_to_string(&files[2]).unwrap();
    for part in [
        "csd-code=\"110104\"",
        "EventActionCode=\"C\"",
        "EventOutcomeIndicator=\"0\"",
        "UID=\"1.2.840.10008.5.1.4.1.1.4\" NumberOfInstances=\"176\"",
        "ParticipantObjectID=\"PID&lt;&amp;&gt;&quot;7&quot;\"",
        "<ParticipantObjectName>Müller^Jörg line two</ParticipantObjectName>",
        "AlternativeUserID=\"AETITLES=MRI_3T\"",
        "AuditEnterpriseSiteID=\"Site &lt;A&gt; &amp; &quot;B&quot;\"",
    ] {
        assert!(received.contains(part), "{part} missing from {received}");
    }
    let sent = std::fs::read_to_string(&files[3]).unwrap();
    assert!(
        sent.contains("EventActionCode=\"R\"") && sent.contains("EventOutcomeIndicator=\"4\""),
        "{sent}"
    );
    let alert = std::fs::read_to_string(&files[5]).unwrap();
    assert!(
        alert.contains("csd-code=\"110113\"") && alert.contains("csd-code=\"110126\""),
        "{alert}"
    );
}

/// Negative control: the schema refuses a message without its EventID and one with an
/// outcome the standard does not define.
#[test]
fn the_schema_refuses_broken_messages() {
    let dir = tempfile::tempdir().unwrap();
    let xml = events()[2].to_xml(&source(), "2026-12-03T19:20:00Z");
    let start = xml.find("<EventID ").unwrap();
    let end = start + xml[start..].find("/>").unwrap() + 2;
    let broken = [
        format!("{}{}", &xml[..start], &xml[end..]),
        xml.replace("EventOutcomeIndicator=\"0\"", "EventOutcomeIndicator=\"3\""),
        xml.replace("2026-12-03T19:20:00Z", "yesterday"),
    ];
    for (i, text) in broken.iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.xml"));
        std::fs::write(&path, text).unwrap();
        let (valid, said) = jing(&[path]);
        assert!(!valid, "jing accepted broken message {i}: {said}");
    }
}

#[test]
fn the_trail_file_is_private_and_stop_writes_everything_queued() {
    let dir = tempfile::tempdir().unwrap();
    let trail = AuditTrail::start(&AuditConfig::default(), dir.path(), "FCDNODE").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let trail = trail.clone();
            std::thread::spawn(move || {
                for event in events().iter().cycle().take(250) {
                    trail.record(event);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    trail.stop();
    let path = dir.path().join("audit/audit.log");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(dir.path().join("audit"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1001, "4 × 250 events and Application Stop");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("<?xml") && l.ends_with("</AuditMessage>"))
    );
    assert!(lines[1000].contains("csd-code=\"110121\""), "{}", lines[1000]);
}

#[test]
fn a_disabled_trail_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        enabled: false,
        ..AuditConfig::default()
    };
    let trail = AuditTrail::start(&config, dir.path(), "FCDNODE").unwrap();
    trail.record(&events()[0]);
    trail.stop();
    assert!(!dir.path().join("audit").exists());
}

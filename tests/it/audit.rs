//! The audit trail of a running node (PS3.15 A.5): a series received and its results sent, an
//! association rejected for its called AE title, a failed TLS handshake, start and stop; every
//! message validated with jing against `tests/fixtures/audit-message.rng`; the same messages
//! received by an audit repository (`openssl s_server` requiring our client certificate) as
//! RFC 5424 syslog over TLS.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use dicom_dictionary_std::tags;

use crate::deliver::Pki;
use crate::node::{NodeProc, Pacs, flair_files, free_port, model, wait_all_delivered, wait_until};
use crate::util::{repo, tempdir, tool};

/// `name="value"` of the first `name` attribute in `xml`.
fn attribute<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&xml[start..start + xml[start..].find('"')?])
}

fn event_id(xml: &str) -> &str {
    let at = xml.find("<EventID ").expect("an EventID");
    attribute(&xml[at..], "csd-code").unwrap_or("")
}

/// Sum of NumberOfInstances over the message's SOP classes.
fn instances(xml: &str) -> u32 {
    xml.match_indices("NumberOfInstances=\"")
        .map(|(i, _)| {
            attribute(&xml[i - 1..], "NumberOfInstances")
                .unwrap()
                .parse::<u32>()
                .unwrap()
        })
        .sum()
}

/// The messages of an RFC 5425 octet-counted stream.
fn syslog_frames(mut bytes: &[u8]) -> Vec<String> {
    let mut frames = Vec::new();
    while let Some(space) = bytes.iter().position(|b| *b == b' ') {
        let len: usize = std::str::from_utf8(&bytes[..space]).unwrap().parse().unwrap();
        let end = space + 1 + len;
        assert!(end <= bytes.len(), "a frame runs past the end of the stream");
        frames.push(String::from_utf8(bytes[space + 1..end].to_vec()).unwrap());
        bytes = &bytes[end..];
    }
    assert!(bytes.is_empty(), "trailing bytes after the last frame");
    frames
}

#[test]
fn the_audit_trail_records_transfers_refusals_start_and_stop_and_reaches_the_repository() {
    let dir = tempdir();
    let pki = Pki::new(dir.path());
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));

    // The audit record repository: mutual TLS, prints what it receives (its stdin stays open:
    // s_server ends a session when its stdin ends).
    let syslog_port = free_port();
    let mut repository = Command::new(tool("openssl"))
        .args(["s_server", "-quiet", "-accept"])
        .arg(syslog_port.to_string())
        .args(["-cert", &pki.path("pacs.pem"), "-key", &pki.path("pacs.key")])
        .args(["-CAfile", &pki.path("ca.pem"), "-Verify", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the audit repository to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", syslog_port)).is_ok()
    });

    let tls_port = free_port();
    let scp_tls = format!(
        "\n[scp.tls]\nbind = \"127.0.0.1:{tls_port}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca = \"{}\"\n",
        pki.path("node.pem"),
        pki.path("node.key"),
        pki.path("ca.pem")
    );
    let mut node = NodeProc::configured(dir.path(), &model(dir.path()), pacs_port, &scp_tls);
    node.edit_config(|text| {
        format!(
            "{text}\n[audit]\nsite_id = \"Ward 7\"\n\n[audit.syslog]\naddress = \"localhost:{syslog_port}\"\n\n\
             [audit.syslog.tls]\nca = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            pki.path("ca.pem"),
            pki.path("node.pem"),
            pki.path("node.key")
        )
    });
    node.restart();

    let files = flair_files();
    let sent = node.storescu(&files);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    wait_all_delivered(&node, 1, Duration::from_secs(180));
    let refused = Command::new(tool("echoscu"))
        .args(["-aet", "INTRUDER", "-aec", "NOT_THE_NODE", "127.0.0.1"])
        .arg(node.dicom_port.to_string())
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "echoscu to a wrong called AE title succeeded"
    );
    // Plain bytes on the TLS port: the handshake fails.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = plain.write_all(b"\x01\x00\x00\x00\x00\x44 this is not TLS at all, it is a plain A-ASSOCIATE-RQ");
    let _ = plain.read(&mut [0u8; 64]);
    drop(plain);
    wait_until("the TLS refusal in the log", Duration::from_secs(20), || {
        node.log_text().contains("TLS handshake failed")
    });
    let status = node.terminate();
    assert!(status.success(), "{status}:\n{}", node.log_text());

    let path = dir.path().join("data/audit/audit.log");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the audit file names patients: owner only");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    // Every message validates.
    let checked = dir.path().join("audit-messages");
    std::fs::create_dir_all(&checked).unwrap();
    let mut paths: Vec<PathBuf> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let p = checked.join(format!("{i:03}.xml"));
        std::fs::write(&p, line).unwrap();
        paths.push(p);
    }
    let jing = Command::new("jing")
        .arg(repo().join("tests/fixtures/audit-message.rng"))
        .args(&paths)
        .output()
        .expect("jing is required (Debian package jing, installed by make setup)");
    assert!(
        jing.status.success(),
        "{}{}",
        String::from_utf8_lossy(&jing.stdout),
        String::from_utf8_lossy(&jing.stderr)
    );

    // Start first, stop last.
    assert_eq!(event_id(lines[0]), "110100");
    assert!(lines[0].contains("csd-code=\"110120\""), "{}", lines[0]);
    let last = lines.last().unwrap();
    assert!(
        event_id(last) == "110100" && last.contains("csd-code=\"110121\""),
        "{last}"
    );
    assert!(lines.iter().all(|l| l.contains("AuditEnterpriseSiteID=\"Ward 7\"")));

    // Received: one message for the study, every instance, its patient, the modality.
    let header = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&files[0])
        .unwrap();
    let text_of = |tag| header.element(tag).unwrap().to_str().unwrap().trim().to_owned();
    let (study, patient) = (text_of(tags::STUDY_INSTANCE_UID), text_of(tags::PATIENT_ID));
    let transferred: Vec<&&str> = lines.iter().filter(|l| event_id(l) == "110104").collect();
    let received: Vec<&&str> = transferred
        .iter()
        .filter(|l| attribute(l, "EventActionCode") == Some("C"))
        .copied()
        .collect();
    assert_eq!(received.len(), 1, "{received:#?}");
    let r = received[0];
    assert_eq!(instances(r), files.len() as u32, "{r}");
    assert!(r.contains(&format!("ParticipantObjectID=\"{study}\"")), "{r}");
    assert!(r.contains(&format!("ParticipantObjectID=\"{patient}\"")), "{r}");
    assert!(r.contains("UserID=\"MRI\"") && r.contains("Source Role ID"), "{r}");

    // Sent: every file the PACS received, counted once, to the PACS.
    let sent: Vec<&&str> = transferred
        .iter()
        .filter(|l| attribute(l, "EventActionCode") == Some("R"))
        .copied()
        .collect();
    assert!(!sent.is_empty());
    let sent_count: u32 = sent.iter().map(|l| instances(l)).sum();
    assert_eq!(sent_count as usize, pacs.files().len(), "{sent:#?}");
    assert!(sent.iter().all(|l| l.contains("UserID=\"PACS\"") && l.contains(&study)));

    // Security alerts: the rejected association and the failed TLS handshake.
    let alerts: Vec<&&str> = lines.iter().filter(|l| event_id(l) == "110113").collect();
    assert!(
        alerts
            .iter()
            .any(|l| l.contains("csd-code=\"110132\"") && l.contains("UserID=\"INTRUDER\"")),
        "{alerts:#?}"
    );
    assert!(alerts.iter().any(|l| l.contains("csd-code=\"110126\"")), "{alerts:#?}");

    // The repository received the same messages, in order, as RFC 5424 over TLS.
    let _ = Command::new("kill")
        .args(["-TERM", &repository.id().to_string()])
        .status();
    let mut received_bytes = Vec::new();
    repository
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut received_bytes)
        .unwrap();
    let _ = repository.wait();
    let frames = syslog_frames(&received_bytes);
    assert_eq!(frames.len(), lines.len(), "syslog frames vs audit file lines");
    for (frame, line) in frames.iter().zip(&lines) {
        assert!(frame.starts_with("<85>1 "), "{frame}");
        assert!(
            frame.contains(" fcdnode ") && frame.contains(" IHE+RFC-3881 - "),
            "{frame}"
        );
        assert!(frame.ends_with(line), "{frame}\nvs\n{line}");
    }
}

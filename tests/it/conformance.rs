//! The DICOM Conformance Statement (`docs/conformance-statement.md`) held to the node, so that
//! it cannot drift: every table marked `<!-- conformance-table: NAME -->` is parsed and checked
//! against what the code does — the SCP's presentation contexts, answers and rejections on a
//! running `fcdnode serve` (hand-made association requests and DCMTK's echoscu and storescu),
//! the objects a job creates and the presentation contexts the SCU proposes (recorded on their
//! way to a DCMTK storescp), how the SCU takes each C-STORE status, and the configuration
//! defaults as the code has them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions, open_file};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::pdu::{
    AssociationRQ, MAXIMUM_PDU_SIZE, PDataValueType, Pdu, PresentationContextProposed, PresentationContextResultReason,
    RequestorRoles, UserVariableItem,
};
use fcdnode::config::Config;
use fcdnode::deliver::{self, FaultKind, StatusClass, TlsSettings, status_class};
use fcdnode::ingest::{
    ACCEPTED_TRANSFER_SYNTAXES, MR_STORAGE_CLASSES, OTHER_STORAGE_CLASSES, ScpConfig, ScpTlsConfig, VERIFICATION,
};
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::{Plane, Volume, acquisition_grid};

use crate::ingest::{Raw, command, pdv};
use crate::node::{Destination, NodeProc, Pacs, flair_files, free_port, model, patient, wait_all_delivered, walk};
use crate::util::{fcdnode, repo, run_ok, tempdir, tool};

const STATEMENT: &str = "docs/conformance-statement.md";

/// The tables the tests below check: the statement must mark exactly these.
const CHECKED: &[&str] = &[
    "overview",
    "scp-sop-classes",
    "implementation-identity",
    "scu-presentation-contexts",
    "scu-store-statuses",
    "scp-association-rejections",
    "scp-transfer-syntaxes",
    "scp-refused-transfer-syntaxes",
    "scp-requests",
    "scp-store-statuses",
    "configuration",
    "created-objects",
];

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
const IMPLICIT: &str = "1.2.840.10008.1.2";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";

/// Abstract syntaxes in none of the statement's tables, which every configuration refuses:
/// RT Image Storage, Study Root Query/Retrieve FIND, Storage Commitment Push Model and Modality
/// Worklist FIND.
const OUTSIDERS: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.481.1",
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.1.20.1",
    "1.2.840.10008.5.1.4.31",
];

/// Requests the SCP does not perform, as (Command Field, whether a data set follows): C-FIND,
/// C-GET, C-MOVE, N-GET, N-ACTION.
const OTHER_REQUESTS: &[(u16, bool)] = &[
    (0x0020, true),
    (0x0010, true),
    (0x0021, true),
    (0x0110, false),
    (0x0130, false),
];

// ---------------------------------------------------------------------------------------------
// Reading the statement.

fn statement() -> String {
    let path = repo().join(STATEMENT);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body rows of the table marked `name`. Its header must be `header`, so that a column
/// moved or renamed fails here instead of being read as another.
fn table(name: &str, header: &[&str]) -> Vec<Vec<String>> {
    let text = statement();
    let marker = format!("<!-- conformance-table: {name} -->");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{STATEMENT} marks no table {name:?}"));
    let rows: Vec<Vec<String>> = text[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(cells)
        .collect();
    assert!(rows.len() > 2, "{STATEMENT}: the table {name:?} must follow its marker");
    assert_eq!(rows[0], header, "{STATEMENT}: header of table {name:?}");
    for row in &rows[2..] {
        assert_eq!(row.len(), header.len(), "{STATEMENT}: table {name:?}, row {row:?}");
    }
    rows[2..].to_vec()
}

fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let inner = line.strip_prefix('|').unwrap_or(line);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

/// The `code spans` of a cell, in order.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The UIDs written as code spans in a cell, in order.
fn uids(cell: &str) -> Vec<String> {
    spans(cell)
        .into_iter()
        .filter(|s| s.contains('.') && s.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .map(str::to_owned)
        .collect()
}

/// The one UID of a cell.
fn uid(cell: &str) -> String {
    match uids(cell).as_slice() {
        [one] => one.clone(),
        other => panic!("{STATEMENT}: expected one UID in {cell:?}, found {other:?}"),
    }
}

/// The hexadecimal codes written as code spans in a cell (`0x0000`), in order.
fn hex_codes(cell: &str) -> Vec<u16> {
    spans(cell)
        .into_iter()
        .filter_map(|s| s.strip_prefix("0x"))
        .map(|h| u16::from_str_radix(h, 16).unwrap_or_else(|e| panic!("{cell:?}: {e}")))
        .collect()
}

/// The number a cell starts with (`2 (rejected-transient)`).
fn leading_number(cell: &str) -> u8 {
    let digits: String = cell.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{STATEMENT}: {cell:?} does not start with a number"))
}

/// The one row whose first cell contains `needle`.
fn row_with<'a>(rows: &'a [Vec<String>], needle: &str) -> &'a [String] {
    let found: Vec<&Vec<String>> = rows.iter().filter(|r| r[0].contains(needle)).collect();
    match found.as_slice() {
        [one] => one,
        other => panic!("{STATEMENT}: expected one row naming {needle:?}, found {other:?}"),
    }
}

#[test]
fn the_statement_marks_exactly_the_checked_tables() {
    let text = statement();
    let opening = "<!-- conformance-table: ";
    let marked: Vec<&str> = text
        .match_indices(opening)
        .map(|(i, _)| {
            let rest = &text[i + opening.len()..];
            &rest[..rest.find(" -->").expect("a marker ends with -->")]
        })
        .collect();
    let unique: BTreeSet<&str> = marked.iter().copied().collect();
    assert_eq!(unique.len(), marked.len(), "a table is marked twice: {marked:?}");
    assert_eq!(unique, CHECKED.iter().copied().collect::<BTreeSet<_>>());
}

/// Whether the SCP accepts a SOP class of Table 4.2-1: always, or only when `other_storage`
/// lets non-MR classes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acceptance {
    Always,
    Option,
}

fn scp_classes() -> BTreeMap<String, Acceptance> {
    table("scp-sop-classes", &["SOP Class", "SOP Class UID", "Accepted"])
        .iter()
        .map(|row| {
            let acceptance = match row[2].as_str() {
                "always" => Acceptance::Always,
                when if when.contains("`other_storage`") => Acceptance::Option,
                other => panic!("{STATEMENT}: Accepted {other:?}"),
            };
            (uid(&row[1]), acceptance)
        })
        .collect()
}

/// Table 4.2-4: the transfer syntaxes the SCU proposes for each SOP class, in order.
fn scu_contexts() -> BTreeMap<String, Vec<String>> {
    let header = [
        "Abstract Syntax",
        "SOP Class UID",
        "Transfer Syntaxes, in the order proposed",
        "Role",
        "Extended Negotiation",
    ];
    table("scu-presentation-contexts", &header)
        .iter()
        .map(|row| {
            assert_eq!((row[3].as_str(), row[4].as_str()), ("SCU", "None"), "{row:?}");
            (uid(&row[1]), uids(&row[2]))
        })
        .collect()
}

#[test]
fn the_overview_agrees_with_the_detailed_tables() {
    let scp = scp_classes();
    let scu = scu_contexts();
    let header = [
        "SOP Class",
        "SOP Class UID",
        "User of Service (SCU)",
        "Provider of Service (SCP)",
    ];
    let mut listed = BTreeSet::new();
    let mut further = None;
    for row in table("overview", &header) {
        match uids(&row[1]).as_slice() {
            [uid] => {
                let scu_cell = if scu.contains_key(uid) { "Yes" } else { "No" };
                let scp_cell = match scp.get(uid) {
                    Some(Acceptance::Always) => "Yes",
                    Some(Acceptance::Option) => "Option",
                    None => "No",
                };
                assert_eq!((row[2].as_str(), row[3].as_str()), (scu_cell, scp_cell), "{row:?}");
                listed.insert(uid.clone());
            }
            [] => {
                assert_eq!((row[2].as_str(), row[3].as_str()), ("No", "Option"), "{row:?}");
                let count = row[0].split_whitespace().find_map(|w| w.parse::<usize>().ok());
                further = Some(count.expect("the further classes are counted"));
            }
            more => panic!("{row:?}: {more:?}"),
        }
    }
    for uid in scu
        .keys()
        .chain(scp.iter().filter(|(_, a)| **a == Acceptance::Always).map(|(u, _)| u))
    {
        assert!(listed.contains(uid), "{uid} is missing from the overview");
    }
    let unlisted = scp.keys().filter(|u| !listed.contains(*u)).count();
    assert_eq!(further, Some(unlisted), "the count of further storage SOP classes");
}

// ---------------------------------------------------------------------------------------------
// How the SCU takes C-STORE statuses, and the configuration.

/// What the outbox does with a delivery after a C-STORE-RSP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    Delivered,
    DeliveredWithWarning,
    Retried,
    DeadLetter,
}

impl Taken {
    fn of(class: StatusClass) -> Self {
        match class {
            StatusClass::Success => Taken::Delivered,
            StatusClass::Warning(_) => Taken::DeliveredWithWarning,
            StatusClass::Failure {
                kind: FaultKind::Transient,
                ..
            } => Taken::Retried,
            StatusClass::Failure {
                kind: FaultKind::Permanent,
                ..
            } => Taken::DeadLetter,
        }
    }

    fn from_cell(cell: &str) -> Self {
        match cell.split(':').next() {
            Some("success") => Taken::Delivered,
            Some("warning") => Taken::DeliveredWithWarning,
            Some("transient failure") => Taken::Retried,
            Some("permanent failure") => Taken::DeadLetter,
            _ => panic!("{STATEMENT}: Treated as {cell:?}"),
        }
    }
}

/// Every status of the statement's table — listed, in a range `0xA700`–`0xA7FF`, or "any
/// other" — is taken by the code as the table says, over all 65536 values.
#[test]
fn the_scu_takes_every_status_as_the_table_says() {
    let mut listed: BTreeMap<u16, Taken> = BTreeMap::new();
    let mut other = None;
    for row in table("scu-store-statuses", &["Status", "Treated as"]) {
        let taken = Taken::from_cell(&row[1]);
        if row[0].starts_with("any other") {
            other = Some(taken);
            continue;
        }
        for item in row[0].split(", ") {
            let codes: Vec<u16> = match hex_codes(item).as_slice() {
                [one] => vec![*one],
                [from, to] if item.contains('–') => (*from..=*to).collect(),
                _ => panic!("{STATEMENT}: status {item:?}"),
            };
            for code in codes {
                assert!(listed.insert(code, taken).is_none(), "0x{code:04X} is listed twice");
            }
        }
    }
    let other = other.expect("a row for any other status");
    let wrong: Vec<String> = (0..=u16::MAX)
        .filter_map(|status| {
            let said = listed.get(&status).copied().unwrap_or(other);
            let done = Taken::of(status_class(status));
            (said != done).then(|| format!("0x{status:04X}: the table says {said:?}, the code {done:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The smallest text of the tables that have keys without a default.
fn minimal(section: &str) -> Option<&'static str> {
    match section {
        "destinations" => Some("name = \"pacs\"\nae_title = \"PACS\"\nhost = \"pacs.example\"\nport = 104\n"),
        "destinations.tls" => Some("ca = \"ca.pem\"\n"),
        "scp.tls" => Some("bind = \"0.0.0.0:2762\"\ncertificate = \"node.pem\"\nprivate_key = \"node.key\"\n"),
        _ => None,
    }
}

fn to_table(value: impl serde::Serialize) -> toml::Table {
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(table)) => table,
        other => panic!("not a table: {other:?}"),
    }
}

/// `text` read as the body of the configuration table `section`, then written back as the
/// code serializes it (defaults filled in).
fn parse_section(section: &str, text: &str) -> Result<toml::Table, toml::de::Error> {
    Ok(match section {
        "destinations" => to_table(toml::from_str::<deliver::Destination>(text)?),
        "destinations.tls" => to_table(toml::from_str::<TlsSettings>(text)?),
        "scp.tls" => to_table(toml::from_str::<ScpTlsConfig>(text)?),
        path => {
            let config: Config = toml::from_str(&format!("[{path}]\n{text}"))?;
            let mut table = to_table(config);
            for part in path.split('.') {
                table = match table.remove(part) {
                    Some(toml::Value::Table(inner)) => inner,
                    other => panic!("[{path}]: {part} is {other:?}"),
                };
            }
            table
        }
    })
}

/// Every default in the configuration table is the code's (a TOML value, "required" or
/// "unset"), and every key of each section the table names is in it.
#[test]
fn the_configuration_table_gives_the_codes_defaults() {
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in table("configuration", &["Key", "Default", "Meaning"]) {
        let key_cell = match spans(&row[0]).as_slice() {
            [one] => one.to_string(),
            _ => panic!("{STATEMENT}: key {:?}", row[0]),
        };
        let (section, key) = key_cell
            .trim_start_matches('[')
            .split_once("] ")
            .map(|(s, k)| (s.trim_end_matches(']').to_owned(), k.to_owned()))
            .unwrap_or_else(|| panic!("{STATEMENT}: key {key_cell:?}"));
        let body = minimal(&section).unwrap_or("");
        let defaults = parse_section(&section, body).unwrap_or_else(|e| panic!("[{section}]: {e}"));
        match row[1].as_str() {
            "required" => {
                let without: String = body
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{key} =")))
                    .map(|l| format!("{l}\n"))
                    .collect();
                assert_ne!(without, body, "[{section}] has no required keys, {key} among them");
                assert!(
                    parse_section(&section, &without).is_err(),
                    "[{section}] {key} is not required"
                );
            }
            "unset" => {
                assert!(!defaults.contains_key(&key), "[{section}] {key} has a default");
                let set = format!("{body}{key} = \"1.2.3\"\n");
                parse_section(&section, &set).unwrap_or_else(|e| panic!("[{section}] {key}: {e}"));
            }
            cell => {
                let literal = match spans(cell).as_slice() {
                    [one] => one.to_string(),
                    _ => panic!("{STATEMENT}: default {cell:?} of [{section}] {key}"),
                };
                let parsed: toml::Table = toml::from_str(&format!("value = {literal}"))
                    .unwrap_or_else(|e| panic!("[{section}] {key}: {literal:?}: {e}"));
                assert_eq!(
                    defaults.get(&key),
                    parsed.get("value"),
                    "[{section}] {key}: the statement's default against the code's"
                );
            }
        }
        assert!(
            listed.entry(section.clone()).or_default().insert(key.clone()),
            "[{section}] {key} is listed twice"
        );
    }
    for (section, keys) in &listed {
        let defaults = parse_section(section, minimal(section).unwrap_or("")).unwrap();
        for (key, value) in &defaults {
            let nested = value.is_table() || value.as_array().is_some_and(|a| a.iter().any(toml::Value::is_table));
            assert!(
                nested || keys.contains(key),
                "[{section}] {key} is missing from the configuration table"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The SCP, on a running node.

/// An A-ASSOCIATE-RQ from `calling` to FCDNODE proposing `contexts`, with `more` user items
/// after the maximum length and implementation class.
fn request(calling: &str, contexts: Vec<PresentationContextProposed>, more: Vec<UserVariableItem>) -> AssociationRQ {
    let mut user_variables = vec![
        UserVariableItem::MaxLength(16384),
        UserVariableItem::ImplementationClassUID("2.25.1234567890".into()),
    ];
    user_variables.extend(more);
    AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: "FCDNODE".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: contexts,
        user_variables,
    }
}

fn context(id: u8, abstract_syntax: &str, transfer_syntax: &str) -> PresentationContextProposed {
    PresentationContextProposed {
        id,
        abstract_syntax: abstract_syntax.into(),
        transfer_syntaxes: vec![transfer_syntax.into()],
    }
}

/// How the SCP answered one proposed presentation context.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Accepted(String),
    /// The PS3.8 result code of the refusal.
    Refused(u8),
}

/// Proposes every (abstract syntax, transfer syntax) pair in a presentation context of its own,
/// 128 per association (each released), and returns the SCP's answers in order.
fn propose(addr: SocketAddr, pairs: &[(&str, &str)]) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(128) {
        let contexts = chunk
            .iter()
            .enumerate()
            .map(|(i, (a, t))| context((2 * i + 1) as u8, a, t))
            .collect();
        let mut raw = Raw::connect(addr);
        raw.send(&Pdu::AssociationRQ(request("CONFORMANCE", contexts, Vec::new())));
        let ac = match raw.receive() {
            Some(Pdu::AssociationAC(ac)) => ac,
            other => panic!("expected an A-ASSOCIATE-AC, got {other:?}"),
        };
        for i in 0..chunk.len() {
            let id = (2 * i + 1) as u8;
            let pc = ac
                .presentation_contexts
                .iter()
                .find(|pc| pc.id == id)
                .unwrap_or_else(|| panic!("no result for context {id}: {ac:?}"));
            answers.push(match pc.reason {
                PresentationContextResultReason::Acceptance => {
                    Answer::Accepted(pc.transfer_syntax.trim_end_matches('\0').to_owned())
                }
                ref refused => Answer::Refused(refused.clone() as u8),
            });
        }
        raw.release();
    }
    answers
}

/// A one-slice MR series file (Explicit VR Little Endian) and the same instance relabelled as
/// Secondary Capture, under `dir`.
fn mr_and_sc(dir: &Path) -> (PathBuf, PathBuf) {
    let grid = acquisition_grid(Plane::Axial, [4.0; 3], [64.0, 64.0, 4.0], [0.0; 3]).unwrap();
    let volume = Volume::filled(&grid, 100.0).unwrap();
    let options = DicomOptions {
        transfer_syntax: EXPLICIT.into(),
        seed: 71,
        ..DicomOptions::default()
    };
    let mr = write_series(&volume, &SeriesInfo::new(71), &options, &dir.join("mr")).unwrap_or_else(|e| panic!("{e}"));
    let object = open_file(&mr[0]).unwrap();
    let instance = object.meta().media_storage_sop_instance_uid().to_owned();
    let mut dataset = object.into_inner();
    dataset.put(DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(SC)));
    let sc = dir.join("sc.dcm");
    dataset
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT)
                .media_storage_sop_class_uid(SC)
                .media_storage_sop_instance_uid(instance),
        )
        .unwrap()
        .write_to_file(&sc)
        .unwrap();
    (mr[0].clone(), sc)
}

/// A DCMTK tool aimed at the node as CONFORMANCE.
fn dcmtk(node: &NodeProc, name: &str, options: &[&str], files: &[&Path]) -> Output {
    Command::new(tool(name))
        .env("TCP_NODELAY", "1")
        .args([
            "-aet",
            "CONFORMANCE",
            "-aec",
            "FCDNODE",
            "-to",
            "20",
            "-ta",
            "20",
            "-td",
            "60",
        ])
        .args(options)
        .args(["127.0.0.1", &node.dicom_port.to_string()])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Tables 4.2-1, 4.2-8 and 4.2-9 are the code's lists, and the running node answers every
/// pair of their SOP classes (and some outside them) with their transfer syntaxes (accepted
/// and refused ones) as they say, with `other_storage` refusing and then discarding; DCMTK's
/// echoscu and storescu agree.
#[test]
fn the_scp_negotiates_exactly_the_tables() {
    let classes = scp_classes();
    let always: BTreeSet<&str> = classes
        .iter()
        .filter(|(_, a)| **a == Acceptance::Always)
        .map(|(u, _)| u.as_str())
        .collect();
    let optional: BTreeSet<&str> = classes
        .iter()
        .filter(|(_, a)| **a == Acceptance::Option)
        .map(|(u, _)| u.as_str())
        .collect();
    let accepted: Vec<String> = table("scp-transfer-syntaxes", &["Transfer Syntax", "UID"])
        .iter()
        .map(|r| uid(&r[1]))
        .collect();
    let refused: Vec<String> = table("scp-refused-transfer-syntaxes", &["Transfer Syntax", "UID", "Why not"])
        .iter()
        .map(|r| uid(&r[1]))
        .collect();
    let code_always: BTreeSet<&str> = MR_STORAGE_CLASSES.iter().copied().chain([VERIFICATION]).collect();
    assert_eq!(always, code_always, "the SOP classes always accepted");
    assert_eq!(
        optional,
        OTHER_STORAGE_CLASSES.iter().copied().collect::<BTreeSet<_>>(),
        "the other storage classes"
    );
    assert_eq!(
        accepted.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        ACCEPTED_TRANSFER_SYNTAXES.iter().copied().collect(),
        "the accepted transfer syntaxes"
    );
    for outsider in OUTSIDERS {
        assert!(!classes.contains_key(*outsider), "{outsider} is in Table 4.2-1");
    }
    let abstract_syntaxes: Vec<&str> = always
        .iter()
        .chain(&optional)
        .copied()
        .chain(OUTSIDERS.iter().copied())
        .collect();
    let pairs: Vec<(&str, &str)> = abstract_syntaxes
        .iter()
        .flat_map(|a| accepted.iter().chain(&refused).map(move |t| (*a, t.as_str())))
        .collect();

    let dir = tempdir();
    let (mr, sc) = mr_and_sc(dir.path());
    let mut node = NodeProc::start(dir.path(), &model(dir.path()), free_port(), "", "");
    for other_storage in ["refuse", "discard"] {
        if other_storage == "discard" {
            node.kill();
            node.edit_config(|text| text.replacen("[scp]\n", "[scp]\nother_storage = \"discard\"\n", 1));
            node.restart();
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], node.dicom_port));
        let answers = propose(addr, &pairs);
        let wrong: Vec<String> = pairs
            .iter()
            .zip(&answers)
            .filter_map(|((a, t), got)| {
                let offered = always.contains(a) || (other_storage == "discard" && optional.contains(a));
                let want = match (offered, accepted.iter().any(|x| x == *t)) {
                    (false, _) => Answer::Refused(3),
                    (true, true) => Answer::Accepted(t.to_string()),
                    (true, false) => Answer::Refused(4),
                };
                (*got != want).then(|| format!("{a} in {t}: the node {got:?}, the tables {want:?}"))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "other_storage = {other_storage}: {} of {} contexts:\n{}",
            wrong.len(),
            pairs.len(),
            wrong.join("\n")
        );

        let echo = dcmtk(&node, "echoscu", &[], &[]);
        assert!(echo.status.success(), "echoscu: {}", said(&echo));
        // -xi: Implicit VR Little Endian first; -R: only the files' SOP classes.
        let stored = dcmtk(&node, "storescu", &["-R", "-xi"], &[&mr]);
        assert!(stored.status.success(), "storescu MR: {}", said(&stored));
        let other = dcmtk(&node, "storescu", &["-R"], &[&sc]);
        if other_storage == "refuse" {
            assert!(!other.status.success(), "storescu SC: {}", said(&other));
            // "No Acceptable Presentation Contexts": the node refused the only one proposed.
            assert!(
                said(&other).contains("No Acceptable Presentation Contexts"),
                "{}",
                said(&other)
            );
        } else {
            assert!(other.status.success(), "storescu SC: {}", said(&other));
        }
    }
}

/// The Message ID responded to and the status of the next response on `raw`.
fn response(raw: &mut Raw) -> (u16, u16) {
    let mut bytes = Vec::new();
    loop {
        match raw.receive() {
            Some(Pdu::PData { data }) => {
                for value in data {
                    assert_eq!(value.value_type, PDataValueType::Command);
                    bytes.extend_from_slice(&value.data);
                    if value.is_last {
                        let ts = TransferSyntaxRegistry.get(IMPLICIT).unwrap();
                        let set = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts).unwrap();
                        let number = |tag| set.element(tag).unwrap().to_int::<u16>().unwrap();
                        return (number(tags::MESSAGE_ID_BEING_RESPONDED_TO), number(tags::STATUS));
                    }
                }
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// The presentation contexts of the association the answers are asked on: Verification and MR
/// Image Storage.
const PC_VERIFICATION: u8 = 1;
const PC_MR: u8 = 3;

/// One request: on context `pc`, Command Field `field` about `sop_class` (and `sop_instance`),
/// with `data` as its data set in PDUs within the default maximum.
struct Ask<'a> {
    pc: u8,
    field: u16,
    sop_class: &'a str,
    sop_instance: Option<&'a str>,
    data: Option<&'a [u8]>,
}

/// Sends `ask` as message `id`, then a C-ECHO-RQ; returns the status of the request's response,
/// or `None` when the echo's came first (the request got none).
fn ask(raw: &mut Raw, id: u16, ask: Ask<'_>) -> Option<u16> {
    let Ask {
        pc,
        field,
        sop_class,
        sop_instance,
        data,
    } = ask;
    let rq = command(field, id, sop_class, sop_instance, data.is_some());
    raw.pdata(vec![pdv(pc, PDataValueType::Command, true, &rq)]);
    if let Some(data) = data {
        let pieces: Vec<&[u8]> = data.chunks(16000).collect();
        for (i, piece) in pieces.iter().enumerate() {
            raw.pdata(vec![pdv(pc, PDataValueType::Data, i + 1 == pieces.len(), piece)]);
        }
    }
    let echo = command(0x0030, id + 1, VERIFICATION, None, false);
    raw.pdata(vec![pdv(PC_VERIFICATION, PDataValueType::Command, true, &echo)]);
    let (first, status) = response(raw);
    if first == id + 1 {
        return None;
    }
    assert_eq!(first, id, "the response answers another message");
    assert_eq!(response(raw), (id + 1, 0x0000), "the C-ECHO after message {id}");
    Some(status)
}

/// A C-STORE-RQ of MR Image Storage instance `sop_instance` on context `pc`.
fn store<'a>(pc: u8, sop_instance: &'a str, data: Option<&'a [u8]>) -> Ask<'a> {
    Ask {
        pc,
        field: 0x0001,
        sop_class: MR,
        sop_instance: Some(sop_instance),
        data,
    }
}

/// An MR data set (Explicit VR Little Endian) whose SOP Instance UID is `sop_instance`.
fn mr_dataset(sop_instance: &str) -> Vec<u8> {
    let mut object = InMemDicomObject::new_empty();
    for (tag, value) in [
        (tags::SOP_CLASS_UID, MR),
        (tags::SOP_INSTANCE_UID, sop_instance),
        (tags::STUDY_INSTANCE_UID, "2.25.71000001"),
        (tags::SERIES_INSTANCE_UID, "2.25.71000002"),
    ] {
        object.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
    }
    object.put(DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("MR")));
    let mut bytes = Vec::new();
    object
        .write_dataset_with_ts(&mut bytes, TransferSyntaxRegistry.get(EXPLICIT).unwrap())
        .unwrap();
    bytes
}

/// The A-ASSOCIATE-RJ the node answers `rq` with, as (result, source, reason) on the wire.
fn rejection(addr: SocketAddr, rq: AssociationRQ) -> (u8, u8, u8) {
    let mut raw = Raw::connect(addr);
    raw.send(&Pdu::AssociationRQ(rq));
    match raw.receive() {
        Some(rj @ Pdu::AssociationRJ(_)) => {
            let mut bytes = Vec::new();
            dicom_ul::write_pdu(&mut bytes, &rj).unwrap();
            (bytes[7], bytes[8], bytes[9])
        }
        other => panic!("expected an A-ASSOCIATE-RJ, got {other:?}"),
    }
}

/// On a running node: the A-ASSOCIATE-AC's items are the implementation identity of Table
/// 4.2-3 and the maximum PDU length, and nothing else even when the request proposes role
/// selection and extended negotiation; each request of Table 4.2-10 and each C-STORE status of
/// Table 4.2-11 is answered as they say; each rejection of Table 4.2-7 is produced.
#[test]
fn the_scp_answers_and_rejects_as_the_tables_say() {
    let dir = tempdir();
    let scp = "allowed_calling = [\"CONFORMANCE\", \"RAWSCU\"]\nmax_associations = 2\nmax_instance_mb = 1";
    let node = NodeProc::start(dir.path(), &model(dir.path()), free_port(), scp, "");
    let addr = SocketAddr::from(([127, 0, 0, 1], node.dicom_port));

    let identity = table(
        "implementation-identity",
        &["Where", "Implementation Class UID", "Implementation Version Name"],
    );
    let ours = row_with(&identity, "A-ASSOCIATE-AC");
    let mut raw = Raw::connect(addr);
    raw.send(&Pdu::AssociationRQ(request(
        "CONFORMANCE",
        vec![
            context(PC_VERIFICATION, VERIFICATION, IMPLICIT),
            context(PC_MR, MR, EXPLICIT),
        ],
        vec![
            UserVariableItem::ScuScpRoleSelectionSubItem(MR.into(), RequestorRoles { scu: true, scp: true }),
            UserVariableItem::SopClassExtendedNegotiationSubItem(MR.into(), vec![1]),
        ],
    )));
    let ac = match raw.receive() {
        Some(Pdu::AssociationAC(ac)) => ac,
        other => panic!("expected an A-ASSOCIATE-AC, got {other:?}"),
    };
    assert!(
        ac.presentation_contexts
            .iter()
            .all(|pc| pc.reason == PresentationContextResultReason::Acceptance),
        "{ac:?}"
    );
    let items: Vec<UserVariableItem> = ac.user_variables.iter().map(trimmed).collect();
    assert_eq!(
        items,
        vec![
            UserVariableItem::MaxLength(ScpConfig::default().max_pdu),
            UserVariableItem::ImplementationClassUID(uid(&ours[1])),
            UserVariableItem::ImplementationVersionName(spans(&ours[2])[0].to_owned()),
        ]
    );

    let mut id = 1;
    let mut next_id = || {
        id += 2;
        id
    };
    for row in table("scp-requests", &["Request", "Command Field", "Answer"]) {
        let fields: Vec<(u16, bool)> = match hex_codes(&row[1]).as_slice() {
            [field] => vec![(*field, matches!(*field, 0x0001 | 0x0010 | 0x0020 | 0x0021))],
            [] => OTHER_REQUESTS.to_vec(),
            more => panic!("{row:?}: {more:?}"),
        };
        let want = match hex_codes(&row[2]).as_slice() {
            [status] => Some(*status),
            [] if row[2].starts_with("none") => None,
            // C-STORE: its statuses are checked below.
            [] => continue,
            more => panic!("{row:?}: {more:?}"),
        };
        let data = mr_dataset("2.25.71000003");
        for (field, with_data) in fields {
            let (pc, sop_class) = if with_data {
                (PC_MR, MR)
            } else {
                (PC_VERIFICATION, VERIFICATION)
            };
            let request = Ask {
                pc,
                field,
                sop_class,
                sop_instance: None,
                data: with_data.then_some(&data[..]),
            };
            let got = ask(&mut raw, next_id(), request);
            assert_eq!(got, want, "{}: command field 0x{field:04X}", row[0]);
        }
    }

    // One request for each status the table lists, but 0x0110, which answers only an internal
    // failure of the node's spool: nothing a peer sends can cause it.
    let listed: BTreeSet<u16> = table("scp-store-statuses", &["Status", "Meaning", "When"])
        .iter()
        .map(|r| hex_codes(&r[0])[0])
        .collect();
    let (one, two) = ("2.25.71000011", "2.25.71000012");
    let (first, second) = (mr_dataset(one), mr_dataset(two));
    let too_large = vec![0; 1024 * 1024 + 2];
    // (0008,0018) UI declaring 255 bytes that are not there.
    let lying: &[u8] = b"\x08\x00\x18\x00UI\xff\x00";
    let stores = [
        ("a new instance", store(PC_MR, one, Some(&first)), 0x0000),
        ("the same instance again", store(PC_MR, one, Some(&first)), 0x0000),
        (
            "MR on the Verification context",
            store(PC_VERIFICATION, two, Some(&second)),
            0x0122,
        ),
        (
            "a data set naming another instance",
            store(PC_MR, two, Some(&first)),
            0xA900,
        ),
        ("a lying element length", store(PC_MR, two, Some(lying)), 0xC000),
        ("no data set", store(PC_MR, two, None), 0xC000),
        (
            "a data set over max_instance_mb",
            store(PC_MR, two, Some(&too_large)),
            0xA700,
        ),
    ];
    let mut seen = BTreeSet::from([0x0110]);
    for (what, request, want) in stores {
        let got = ask(&mut raw, next_id(), request);
        assert_eq!(got, Some(want), "C-STORE of {what}");
        seen.insert(want);
    }
    assert_eq!(seen, listed, "the statuses of Table 4.2-11");
    raw.release();

    let rows = table("scp-association-rejections", &["Result", "Source", "Reason", "When"]);
    let said: BTreeSet<(u8, u8, u8)> = rows
        .iter()
        .map(|r| (leading_number(&r[0]), leading_number(&r[1]), leading_number(&r[2])))
        .collect();
    let base = || request("CONFORMANCE", vec![context(1, VERIFICATION, IMPLICIT)], Vec::new());
    let mut done = BTreeSet::from([
        rejection(
            addr,
            AssociationRQ {
                protocol_version: 2,
                ..base()
            },
        ),
        rejection(
            addr,
            AssociationRQ {
                application_context_name: "1.2.3.4".into(),
                ..base()
            },
        ),
        rejection(
            addr,
            AssociationRQ {
                called_ae_title: "SOMEONEELSE".into(),
                ..base()
            },
        ),
        rejection(
            addr,
            AssociationRQ {
                calling_ae_title: "INTRUDER".into(),
                ..base()
            },
        ),
    ]);
    // max_associations = 2: associations are held until one is turned away (a slot released
    // just before may still be held, so that may come sooner).
    let mut held = Vec::new();
    loop {
        let mut raw = Raw::connect(addr);
        raw.send(&Pdu::AssociationRQ(base()));
        match raw.receive() {
            Some(Pdu::AssociationAC(_)) => held.push(raw),
            Some(rj @ Pdu::AssociationRJ(_)) => {
                let mut bytes = Vec::new();
                dicom_ul::write_pdu(&mut bytes, &rj).unwrap();
                done.insert((bytes[7], bytes[8], bytes[9]));
                break;
            }
            other => panic!("expected an A-ASSOCIATE-AC or -RJ, got {other:?}"),
        }
        assert!(held.len() <= 2, "a third association was accepted");
    }
    for mut raw in held {
        raw.release();
    }
    assert_eq!(done, said, "the rejections of Table 4.2-7 as (result, source, reason)");
}

/// A user item with the padding a UID or name may carry on the wire removed.
fn trimmed(item: &UserVariableItem) -> UserVariableItem {
    match item {
        UserVariableItem::ImplementationClassUID(u) => {
            UserVariableItem::ImplementationClassUID(u.trim_end_matches('\0').to_owned())
        }
        UserVariableItem::ImplementationVersionName(n) => {
            UserVariableItem::ImplementationVersionName(n.trim_end_matches(['\0', ' ']).to_owned())
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// The objects a job creates, and the SCU.

/// A relay in front of storescp that keeps the A-ASSOCIATE-RQ of every association it carries:
/// what the SCU proposes, read off the wire, while the objects still reach a real PACS.
struct Recorder {
    port: u16,
    requests: Arc<Mutex<Vec<AssociationRQ>>>,
}

impl Recorder {
    fn start(pacs_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || relay(client, pacs_port, &kept));
            }
        });
        Self { port, requests }
    }

    fn requests(&self) -> Vec<AssociationRQ> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads the first PDU from `client`, keeps it when it is an A-ASSOCIATE-RQ, then passes it and
/// everything after it both ways between `client` and the PACS.
fn relay(mut client: TcpStream, pacs_port: u16, kept: &Mutex<Vec<AssociationRQ>>) {
    let mut first = Vec::new();
    let pdu = loop {
        let mut cursor = std::io::Cursor::new(&first[..]);
        if let Some(pdu) = dicom_ul::read_pdu(&mut cursor, MAXIMUM_PDU_SIZE, false).unwrap() {
            break pdu;
        }
        let mut chunk = [0u8; 65536];
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => first.extend_from_slice(&chunk[..n]),
        }
    };
    if let Pdu::AssociationRQ(rq) = pdu {
        kept.lock().unwrap().push(rq);
    }
    let mut pacs = TcpStream::connect(("127.0.0.1", pacs_port)).unwrap();
    for stream in [&client, &pacs] {
        stream.set_nodelay(true).unwrap();
    }
    pacs.write_all(&first).unwrap();
    let (mut from_pacs, mut to_client) = (pacs.try_clone().unwrap(), client.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_pacs, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut client, &mut pacs);
    let _ = pacs.shutdown(Shutdown::Write);
    let _ = back.join();
}

/// What Table 8.1-1 says of an object: SOP Class UID, Series Number, Series Description and
/// Modality.
fn described(path: &Path) -> [String; 4] {
    let object = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = |tag| {
        object
            .element(tag)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_owned()
    };
    [
        object
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_owned(),
        text(tags::SERIES_NUMBER),
        text(tags::SERIES_DESCRIPTION),
        text(tags::MODALITY),
    ]
}

/// The transfer syntax and implementation identity of a file's meta group.
fn meta_of(path: &Path) -> [String; 3] {
    let object = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let meta = object.meta();
    [
        meta.transfer_syntax().trim_end_matches('\0').to_owned(),
        meta.implementation_class_uid().trim_end_matches('\0').to_owned(),
        meta.implementation_version_name()
            .unwrap_or_default()
            .trim_end_matches(['\0', ' '])
            .to_owned(),
    ]
}

fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect()
}

/// A job of the node with the demo model on the synthetic FCD patient (suspected, so every
/// object is made) sends exactly the objects of Table 8.1-1, written as its Transfer Syntax
/// column and Table 4.2-3 say, over associations proposing the contexts of Table 4.2-4 with
/// the SCU's identity; a C-ECHO to the destination proposes the Verification row, a C-MOVE and
/// a C-FIND the Query/Retrieve rows; and
/// `fcdnode infer --single-frame` makes the per-slice overlay row.
#[test]
fn created_objects_and_scu_proposals_are_the_tables() {
    let header = [
        "Object",
        "SOP Class",
        "SOP Class UID",
        "Series Number",
        "Series Description",
        "Modality",
        "Transfer Syntax",
        "Made when",
    ];
    let created = table("created-objects", &header);
    let row_of = |r: &Vec<String>| {
        let modality = r[5].split_whitespace().next().unwrap_or_default().to_owned();
        [uid(&r[2]), r[3].clone(), r[4].clone(), modality]
    };
    let (single_frame, default): (Vec<&Vec<String>>, Vec<&Vec<String>>) = created
        .iter()
        .partition(|r| r[7].contains("`[pipeline] multiframe_sc = false`"));
    assert_eq!(single_frame.len(), 1, "one row for the per-slice overlay");
    let transfer_syntax: BTreeMap<String, String> = created.iter().map(|r| (uid(&r[2]), uid(&r[6]))).collect();
    let contexts = scu_contexts();
    let identity = table(
        "implementation-identity",
        &["Where", "Implementation Class UID", "Implementation Version Name"],
    );
    let identity_of = |needle: &str| {
        let row = row_with(&identity, needle);
        (uid(&row[1]), spans(&row[2])[0].to_owned())
    };
    let (scu_class, scu_version) = identity_of("A-ASSOCIATE-RQ");
    let (file_class, file_version) = identity_of("File Meta");

    let dir = tempdir();
    let pacs_port = free_port();
    let pacs = Pacs::start(pacs_port, &dir.path().join("pacs"));
    let recorder = Recorder::start(pacs_port);
    let destination = Destination {
        name: "pacs",
        ae_title: "PACS",
        port: recorder.port,
    };
    let node = NodeProc::start_with(
        dir.path(),
        &repo().join("models/demo"),
        free_port(),
        &destination,
        "",
        "",
    );
    let sent = node.storescu(&flair_files());
    assert!(sent.status.success(), "storescu: {}", said(&sent));
    wait_all_delivered(&node, 1, Duration::from_secs(600));
    let job = node.get(&format!("/jobs/{}", node.jobs()[0]["id"]));
    assert_eq!(
        job["result"]["suspected"], true,
        "the demo model must suspect the fixture patient for the Segmentation row to apply: {job}"
    );

    let mut arrived: Vec<[String; 4]> = pacs.files().iter().map(|f| described(f)).collect();
    let mut expected: Vec<[String; 4]> = default.iter().map(|r| row_of(r)).collect();
    arrived.sort();
    expected.sort();
    assert_eq!(arrived, expected, "the objects at the PACS against Table 8.1-1");
    let written = dicom_files(&dir.path().join("data/results"));
    assert_eq!(written.len(), arrived.len(), "{written:?}");
    for file in &written {
        let class = &described(file)[0];
        assert_eq!(
            meta_of(file),
            [transfer_syntax[class].clone(), file_class.clone(), file_version.clone()],
            "{}",
            file.display()
        );
    }

    let dest = deliver::Destination::new("pacs", "PACS", "127.0.0.1", recorder.port);
    let before = recorder.requests().len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(deliver::echo(&dest, "FCDNODE"))
        .unwrap_or_else(|e| panic!("C-ECHO to the PACS: {e}"));
    // storescp offers no retrieval: the association carries no context, but its request shows
    // what the MOVE and FIND SCU propose.
    let refused = runtime.block_on(deliver::retrieve(&dest, "FCDNODE", "1.2.826.0.1.3680043.8.498.1"));
    let err = refused.expect_err("storescp is no C-MOVE SCP").to_string();
    assert!(
        err.contains("accepted none of the proposed presentation contexts"),
        "{err}"
    );
    let refused = runtime.block_on(deliver::find_studies(&dest, "FCDNODE", "SYNTH00001", "20240101"));
    let err = refused.expect_err("storescp is no C-FIND SCP").to_string();
    assert!(
        err.contains("accepted none of the proposed presentation contexts"),
        "{err}"
    );
    let requests = recorder.requests();
    assert_eq!(
        requests.len(),
        before + 3,
        "the C-ECHO, the C-MOVE and the C-FIND took one association each"
    );
    let echo_classes: Vec<String> = requests[before]
        .presentation_contexts
        .iter()
        .map(|pc| pc.abstract_syntax.trim_end_matches('\0').to_owned())
        .collect();
    assert_eq!(echo_classes, [VERIFICATION]);
    let move_classes: Vec<String> = requests[before + 1]
        .presentation_contexts
        .iter()
        .map(|pc| pc.abstract_syntax.trim_end_matches('\0').to_owned())
        .collect();
    assert_eq!(move_classes, [deliver::STUDY_ROOT_MOVE]);
    let find_classes: Vec<String> = requests[before + 2]
        .presentation_contexts
        .iter()
        .map(|pc| pc.abstract_syntax.trim_end_matches('\0').to_owned())
        .collect();
    assert_eq!(find_classes, [deliver::STUDY_ROOT_FIND]);
    let mut proposed = BTreeSet::new();
    for rq in &requests {
        assert_eq!(
            (rq.calling_ae_title.trim(), rq.called_ae_title.trim()),
            ("FCDNODE", "PACS")
        );
        let items: Vec<UserVariableItem> = rq.user_variables.iter().map(trimmed).collect();
        assert_eq!(
            items,
            vec![
                UserVariableItem::MaxLength(dest.max_pdu),
                UserVariableItem::ImplementationClassUID(scu_class.clone()),
                UserVariableItem::ImplementationVersionName(scu_version.clone()),
            ]
        );
        for pc in &rq.presentation_contexts {
            let class = pc.abstract_syntax.trim_end_matches('\0').to_owned();
            let syntaxes: Vec<String> = pc
                .transfer_syntaxes
                .iter()
                .map(|t| t.trim_end_matches('\0').to_owned())
                .collect();
            assert_eq!(
                Some(&syntaxes),
                contexts.get(&class),
                "the transfer syntaxes proposed for {class}"
            );
            proposed.insert(class);
        }
    }
    assert_eq!(
        proposed,
        contexts.keys().cloned().collect(),
        "the SOP classes of Table 4.2-4"
    );

    let out = dir.path().join("single-frame");
    run_ok(
        fcdnode()
            .arg("infer")
            .arg(patient().join("dicom/sub-00001"))
            .arg("--model")
            .arg(repo().join("models/demo"))
            .arg("--out")
            .arg(&out)
            .arg("--single-frame"),
    );
    let overlay = dicom_files(&out.join("sc"));
    assert!(overlay.len() > 1, "one instance per slice: {overlay:?}");
    let want = row_of(single_frame[0]);
    for file in &overlay {
        assert_eq!(described(file), want, "{}", file.display());
        assert_eq!(meta_of(file)[0], transfer_syntax[&want[0]], "{}", file.display());
    }
}

//! Deliver (C-STORE SCU) against real peers: DCMTK `storescp` as the PACS (bit-preserving,
//! implicit-only, MR-only by association config, aborting), small dicom-ul or raw-TCP
//! acceptors for rejections, DIMSE statuses and silence. Checks that files arrive intact or
//! correctly re-encoded and that every fault is classified transient or permanent per file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dicom_core::value::Value;
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTable;
use dicom_object::{InMemDicomObject, open_file};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJSource,
    PDataValue, PDataValueType, Pdu, write_pdu,
};
use fcdnode::assemble::assemble_paths;
use fcdnode::deliver::{
    DeliveryFault, Destination, FaultKind, FaultReason, FileOutcome, IMPLICIT_VR_LE, RetryPolicy, TlsSettings, send,
};
use fcdnode::report::{
    Algorithm, Device, Finding, Hotspot, ReportInputs, ReportOptions, Timings, UidGenerator, write_outputs,
};
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::Volume;
use fcdnode::volume::{Plane, acquisition_grid};

use crate::util::{tempdir, tool};

const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";

/// Six MR slices (explicit VR LE), two more MR slices in JPEG-LS, and the node's own SC and SR
/// made from the first series.
struct Fixture {
    tmp: tempfile::TempDir,
    mr: Vec<PathBuf>,
    mr_jls: Vec<PathBuf>,
    sc: Vec<PathBuf>,
    /// Parametric Map (32-bit float pixels) and Segmentation (1-bit pixels).
    pm_seg: Vec<PathBuf>,
    sr: PathBuf,
}

impl Fixture {
    /// MR + SC + PM + SEG + SR, all uncompressed.
    fn uncompressed(&self) -> Vec<PathBuf> {
        let mut all = self.mr.clone();
        all.extend(self.sc.iter().cloned());
        all.extend(self.pm_seg.iter().cloned());
        all.push(self.sr.clone());
        all
    }
}

fn fixture() -> Fixture {
    let tmp = tempdir();
    let grid = acquisition_grid(Plane::Axial, [2.0, 2.0, 2.0], [32.0, 32.0, 12.0], [0.0; 3]).unwrap();
    assert_eq!(grid.shape, [16, 16, 6]);
    let mut volume = Volume::filled(&grid, 0.0).unwrap();
    for ((i, j, k), v) in volume.data_mut().indexed_iter_mut() {
        *v = (100 + (i * 13 + j * 7 + k * 29) % 700) as f32;
    }
    let mr_dir = tmp.path().join("mr");
    let mr = write_series(&volume, &SeriesInfo::new(21), &DicomOptions::default(), &mr_dir).unwrap();
    let jls_options = DicomOptions {
        transfer_syntax: JPEG_LS_LOSSLESS.into(),
        seed: 5,
        ..DicomOptions::default()
    };
    let mr_jls = write_series(&volume, &SeriesInfo::new(22), &jls_options, &tmp.path().join("jls")).unwrap();

    let source = assemble_paths(std::slice::from_ref(&mr_dir), None).unwrap();
    let header = open_file(&mr[0]).unwrap();
    let mut heatmap = Volume::filled(&source.volume.grid(), 0.0).unwrap();
    for ((i, j, k), v) in heatmap.data_mut().indexed_iter_mut() {
        let d2 = (i as f32 - 8.0).powi(2) + (j as f32 - 8.0).powi(2) + (k as f32 - 3.0).powi(2);
        *v = (-d2 / 8.0).exp();
    }
    let finding = Finding {
        probability: 0.81,
        probability_uncalibrated: None,
        threshold: 0.5,
        suspected: true,
        fold_probabilities: vec![0.8, 0.82],
        peak: Some(Hotspot {
            lps: source.volume.voxel_to_world([8.0, 8.0, 3.0]),
            slice: 3,
        }),
    };
    let algorithm = Algorithm {
        name: "fcd-test".into(),
        version: "0.0.1".into(),
        parameters: "deliver test".into(),
        sha256: String::new(),
    };
    let device = Device::default();
    let options = ReportOptions::new();
    let inputs = ReportInputs {
        source_header: &header,
        source: &source,
        finding: &finding,
        algorithm: &algorithm,
        device: &device,
        options: &options,
    };
    let written = write_outputs(
        &inputs,
        &heatmap,
        &mut UidGenerator::seeded(9),
        Timings::default(),
        &tmp.path().join("out"),
        &mut |_| {},
    )
    .unwrap();
    let seg = written.seg_path.expect("the fixture's hotspot is coloured: a SEG");
    Fixture {
        tmp,
        mr,
        mr_jls,
        sc: written.sc_paths,
        pm_seg: [written.key_image_path, written.pm_path, Some(seg)]
            .into_iter()
            .flatten()
            .collect(),
        sr: written.sr_path.expect("the SR is made by default"),
    }
}

/// A multi-thread runtime (the SCU reads files on blocking threads).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `storescp` (AE title `PACS`) writing into `dir`; killed on drop.
struct StoreScp {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl StoreScp {
    fn start(work: &Path, extra: &[&str]) -> Self {
        let dir = work.join("received");
        std::fs::create_dir_all(&dir).unwrap();
        let log = work.join("storescp.log");
        let port = free_port();
        let child = Command::new(tool("storescp"))
            .env("TCP_NODELAY", "1")
            .args(["-aet", "PACS", "-od"])
            .arg(&dir)
            .args(extra)
            .arg(port.to_string())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start storescp: {e}"));
        let mut scp = Self { child, port, dir, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = scp.child.try_wait() {
                panic!("storescp exited with {status}:\n{}", scp.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "storescp never listened on {port}:\n{}",
                scp.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        scp
    }

    fn destination(&self) -> Destination {
        Destination::new("pacs", "PACS", "127.0.0.1", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Received files by SOP Instance UID.
    fn received(&self) -> BTreeMap<String, PathBuf> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (sop_uid(&open_file(&p).unwrap()), p))
            .collect()
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sop_uid(obj: &InMemDicomObject) -> String {
    obj.get(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

/// The data set bytes of a file (after the file meta group).
fn dataset_bytes(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[128..132], b"DICM", "{}", path.display());
    let mut cursor = Cursor::new(&bytes[128..]);
    FileMetaTable::from_reader(&mut cursor).unwrap();
    bytes[128 + cursor.position() as usize..].to_vec()
}

/// Every primitive value of a data set by tag path, as little-endian bytes (independent of
/// the transfer syntax it was read from).
fn flatten(obj: &InMemDicomObject, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for elem in obj {
        let key = format!("{prefix}{}", elem.header().tag);
        match elem.value() {
            Value::Primitive(p) => {
                out.insert(key, p.to_bytes().into_owned());
            }
            Value::Sequence(seq) => {
                for (n, item) in seq.items().iter().enumerate() {
                    flatten(item, &format!("{key}[{n}]."), out);
                }
            }
            Value::PixelSequence(seq) => {
                for (n, f) in seq.fragments().iter().enumerate() {
                    out.insert(format!("{key}#{n}"), f.clone());
                }
            }
        }
    }
}

fn flat(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    flatten(&open_file(path).unwrap(), "", &mut out);
    out
}

fn ok(outcomes: &[FileOutcome]) -> Vec<&FileOutcome> {
    outcomes.iter().filter(|o| o.result.is_ok()).collect()
}

fn fault(o: &FileOutcome) -> &DeliveryFault {
    o.result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("{} was stored", o.path.display()))
}

#[test]
fn all_files_arrive_byte_identical() {
    let f = fixture();
    // Bit-preserving: storescp writes the data set exactly as it came off the wire.
    let scp = StoreScp::start(f.tmp.path(), &["+B"]);
    let files = f.uncompressed();
    let outcomes = block_on(send(&scp.destination(), "FCDNODE", &files)).unwrap();
    assert_eq!(outcomes.len(), files.len());
    for (o, path) in outcomes.iter().zip(&files) {
        assert_eq!(&o.path, path);
        let stored = o.result.as_ref().unwrap_or_else(|e| panic!("{e}\n{}", scp.log_text()));
        assert_eq!(stored.status, 0);
        assert!(!stored.transcoded);
    }
    let received = scp.received();
    let sent: BTreeSet<String> = files.iter().map(|p| sop_uid(&open_file(p).unwrap())).collect();
    assert_eq!(received.keys().cloned().collect::<BTreeSet<_>>(), sent);
    for (path, o) in files.iter().zip(&outcomes) {
        let uid = o.sop_instance_uid.as_deref().unwrap();
        let theirs = &received[uid];
        assert!(
            dataset_bytes(path) == dataset_bytes(theirs),
            "{}: data set differs from {}",
            path.display(),
            theirs.display()
        );
        let (ours, theirs) = (open_file(path).unwrap(), open_file(theirs).unwrap());
        if let Some(pixels) = ours.get(tags::PIXEL_DATA) {
            assert_eq!(
                pixels.to_bytes().unwrap(),
                theirs.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap()
            );
        }
    }
    // The SC carries pixel data, so the comparison above covered a non-MR image too.
    assert!(open_file(&f.sc[0]).unwrap().get(tags::PIXEL_DATA).is_some());
}

#[test]
fn implicit_only_destination_gets_transcoded_files() {
    let f = fixture();
    let scp = StoreScp::start(f.tmp.path(), &["+xi"]);
    let files = f.uncompressed();
    let outcomes = block_on(send(&scp.destination(), "FCDNODE", &files)).unwrap();
    for o in &outcomes {
        let stored = o.result.as_ref().unwrap_or_else(|e| panic!("{e}\n{}", scp.log_text()));
        assert_eq!(stored.transfer_syntax, IMPLICIT_VR_LE);
        assert!(stored.transcoded, "{}", o.path.display());
    }
    let received = scp.received();
    assert_eq!(received.len(), files.len());
    for (path, o) in files.iter().zip(&outcomes) {
        let theirs = &received[o.sop_instance_uid.as_deref().unwrap()];
        let meta = open_file(theirs).unwrap().meta().transfer_syntax().to_owned();
        assert_eq!(meta, IMPLICIT_VR_LE, "{}", theirs.display());
        let (a, b) = (flat(path), flat(theirs));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{}: elements differ",
            path.display()
        );
        for (k, v) in &a {
            assert!(v == &b[k], "{}: {k} differs", path.display());
        }
        assert!(a.contains_key(&tags::SOP_INSTANCE_UID.to_string()));
    }
}

#[test]
fn refused_sop_class_and_compressed_syntax_fail_permanently_per_file() {
    let f = fixture();
    // Accepts MR Image Storage, uncompressed, and nothing else.
    let cfg = f.tmp.path().join("mr-only.cfg");
    std::fs::write(
        &cfg,
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LocalEndianExplicit\n\
         TransferSyntax2 = LittleEndianImplicit\n\
         [[PresentationContexts]]\n[MROnly]\nPresentationContext1 = VerificationSOPClass\\Uncompressed\n\
         PresentationContext2 = MRImageStorage\\Uncompressed\n\
         [[Profiles]]\n[MROnly]\nPresentationContexts = MROnly\n",
    )
    .unwrap();
    let scp = StoreScp::start(f.tmp.path(), &["-xf", cfg.to_str().unwrap(), "MROnly"]);
    let dest = scp.destination();
    let mut files = f.mr.clone();
    files.extend(f.mr_jls.iter().cloned());
    files.extend(f.sc.iter().cloned());
    files.push(f.sr.clone());
    let outcomes = block_on(send(&dest, "FCDNODE", &files)).unwrap();
    assert_eq!(ok(&outcomes).len(), f.mr.len(), "{outcomes:#?}\n{}", scp.log_text());
    for o in &outcomes[..f.mr.len()] {
        assert!(o.result.is_ok(), "{o:?}");
    }
    for o in &outcomes[f.mr.len()..] {
        let fault = fault(o);
        assert_eq!(fault.kind(), FaultKind::Permanent, "{fault}");
        let text = fault.to_string();
        assert!(
            text.contains(&o.path.display().to_string()) && text.contains("PACS@127.0.0.1") && text.contains("pacs"),
            "{text}"
        );
    }
    for o in &outcomes[f.mr.len()..f.mr.len() + f.mr_jls.len()] {
        assert!(matches!(*fault(o).reason, FaultReason::NotTranscodable { .. }), "{o:?}");
    }
    for o in &outcomes[f.mr.len() + f.mr_jls.len()..] {
        assert!(matches!(*fault(o).reason, FaultReason::NoContext { .. }), "{o:?}");
    }
    assert_eq!(scp.received().len(), f.mr.len());

    // Only refused classes: the association itself is useless, a permanent fault.
    let err = block_on(send(&dest, "FCDNODE", std::slice::from_ref(&f.sr))).unwrap_err();
    assert_eq!(err.kind(), FaultKind::Permanent, "{err}");
    assert!(matches!(*err.reason, FaultReason::NoContextAtAll { .. }), "{err}");
}

#[test]
fn abort_mid_association_is_transient_and_keeps_the_rest_unsent() {
    let f = fixture();
    let scp = StoreScp::start(f.tmp.path(), &["--abort-after"]);
    let files = f.mr[..3].to_vec();
    let outcomes = block_on(send(&scp.destination(), "FCDNODE", &files)).unwrap();
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes {
        assert_eq!(fault(o).kind(), FaultKind::Transient, "{o:?}");
    }
    assert!(
        matches!(
            *fault(&outcomes[0]).reason,
            FaultReason::Aborted { .. } | FaultReason::ConnectionLost { .. }
        ),
        "{:?}",
        outcomes[0]
    );
    for o in &outcomes[1..] {
        assert!(matches!(*fault(o).reason, FaultReason::NotSent(_)), "{o:?}");
    }
}

#[test]
fn connection_refused_is_transient() {
    let f = fixture();
    let port = free_port();
    let dest = Destination::new("down", "PACS", "127.0.0.1", port);
    let err = block_on(send(&dest, "FCDNODE", &f.mr[..1])).unwrap_err();
    assert_eq!(err.kind(), FaultKind::Transient, "{err}");
    assert!(matches!(*err.reason, FaultReason::Connect(_)), "{err}");
    assert!(err.to_string().contains(&format!("PACS@127.0.0.1:{port}")), "{err}");
}

/// Accepts one connection on a fresh port and runs `serve` on it in a thread.
fn one_shot<F>(serve: F) -> (u16, std::thread::JoinHandle<()>)
where
    F: FnOnce(TcpStream) + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        serve(socket);
    });
    (port, handle)
}

#[test]
fn wrong_called_ae_is_permanent() {
    let f = fixture();
    let (port, handle) = one_shot(|socket| {
        let options = dicom_ul::association::ServerAssociationOptions::new()
            .ae_title("PACS")
            .accept_called_ae_title()
            .with_abstract_syntax(uids::MR_IMAGE_STORAGE);
        assert!(options.establish(socket).is_err(), "the acceptor must reject");
    });
    let dest = Destination::new("pacs", "NOT-PACS", "127.0.0.1", port);
    let err = block_on(send(&dest, "FCDNODE", &f.mr[..1])).unwrap_err();
    handle.join().unwrap();
    assert_eq!(err.kind(), FaultKind::Permanent, "{err}");
    assert!(
        matches!(*err.reason, FaultReason::Rejected { permanent: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("called"), "{err}");
}

#[test]
fn transient_rejection_is_transient() {
    let f = fixture();
    let (port, handle) = one_shot(|mut socket| {
        // Read the A-ASSOCIATE-RQ (6-byte header with a big-endian length), then reject.
        let mut header = [0u8; 6];
        socket.read_exact(&mut header).unwrap();
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let mut body = vec![0u8; len];
        socket.read_exact(&mut body).unwrap();
        let mut out = Vec::new();
        let rj = AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
            ),
        };
        write_pdu(&mut out, &Pdu::AssociationRJ(rj)).unwrap();
        socket.write_all(&out).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let dest = Destination::new("busy", "PACS", "127.0.0.1", port);
    let err = block_on(send(&dest, "FCDNODE", &f.mr[..1])).unwrap_err();
    handle.join().unwrap();
    assert_eq!(err.kind(), FaultKind::Transient, "{err}");
    assert!(
        matches!(*err.reason, FaultReason::Rejected { permanent: false, .. }),
        "{err}"
    );
}

#[test]
fn silent_peer_times_out_transiently() {
    let f = fixture();
    let (port, handle) = one_shot(|socket| {
        // Hold the connection open without a word, longer than the SCU waits.
        std::thread::sleep(Duration::from_secs(3));
        drop(socket);
    });
    let dest = Destination {
        timeout_s: 1,
        ..Destination::new("mute", "PACS", "127.0.0.1", port)
    };
    let err = block_on(send(&dest, "FCDNODE", &f.mr[..1])).unwrap_err();
    handle.join().unwrap();
    assert_eq!(err.kind(), FaultKind::Transient, "{err}");
    assert!(matches!(*err.reason, FaultReason::Timeout { .. }), "{err}");
}

/// Implicit VR LE element of group 0000.
fn put(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// The value of (0000,`element`) in an implicit VR LE command set.
fn command_value(command: &[u8], element: u16) -> Vec<u8> {
    let mut pos = 0;
    while pos + 8 <= command.len() {
        let el = u16::from_le_bytes([command[pos + 2], command[pos + 3]]);
        let len = u32::from_le_bytes(command[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if el == element {
            return command[pos + 8..pos + 8 + len].to_vec();
        }
        pos += 8 + len;
    }
    panic!("no (0000,{element:04X}) in the command");
}

#[test]
fn dimse_statuses_are_classified_per_file() {
    let f = fixture();
    // Answers the n-th C-STORE with STATUSES[n]: warning, out of resources, cannot
    // understand, SOP class not supported, success.
    const STATUSES: [u16; 5] = [0xB000, 0xA700, 0xC000, 0x0122, 0x0000];
    let (port, handle) = one_shot(|socket| {
        let options = dicom_ul::association::ServerAssociationOptions::new()
            .ae_title("PACS")
            .accept_called_ae_title()
            .with_abstract_syntax(uids::MR_IMAGE_STORAGE)
            .with_transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .with_transfer_syntax(uids::IMPLICIT_VR_LITTLE_ENDIAN);
        let mut assoc = options.establish(socket).unwrap();
        let mut answered = 0;
        let mut command = Vec::new();
        loop {
            match assoc.receive().unwrap() {
                Pdu::PData { data } => {
                    for pdv in data {
                        if pdv.value_type == PDataValueType::Command {
                            command.extend_from_slice(&pdv.data);
                        } else if pdv.is_last {
                            let id = command_value(&command, 0x0110);
                            let uid = command_value(&command, 0x1000);
                            let mut body = Vec::new();
                            put(&mut body, 0x0002, &command_value(&command, 0x0002));
                            put(&mut body, 0x0100, &0x8001u16.to_le_bytes());
                            put(&mut body, 0x0120, &id);
                            put(&mut body, 0x0800, &0x0101u16.to_le_bytes());
                            put(&mut body, 0x0900, &STATUSES[answered].to_le_bytes());
                            put(&mut body, 0x0902, b"test status ");
                            put(&mut body, 0x1000, &uid);
                            let mut rsp = Vec::new();
                            put(&mut rsp, 0x0000, &(body.len() as u32).to_le_bytes());
                            rsp.extend_from_slice(&body);
                            assoc
                                .send(&Pdu::PData {
                                    data: vec![PDataValue {
                                        presentation_context_id: pdv.presentation_context_id,
                                        value_type: PDataValueType::Command,
                                        is_last: true,
                                        data: rsp,
                                    }],
                                })
                                .unwrap();
                            answered += 1;
                            command.clear();
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    assoc.send(&Pdu::ReleaseRP).unwrap();
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(answered, STATUSES.len());
    });
    let dest = Destination::new("pacs", "PACS", "127.0.0.1", port);
    let files = f.mr[..5].to_vec();
    let outcomes = block_on(send(&dest, "FCDNODE", &files)).unwrap();
    handle.join().unwrap();
    let stored = outcomes[0].result.as_ref().unwrap();
    assert_eq!(stored.status, 0xB000);
    assert!(stored.warning.as_deref().unwrap().contains("coercion"), "{stored:?}");
    assert_eq!(fault(&outcomes[1]).kind(), FaultKind::Transient);
    assert_eq!(fault(&outcomes[2]).kind(), FaultKind::Permanent);
    assert_eq!(fault(&outcomes[3]).kind(), FaultKind::Permanent);
    // The Error Comment is read, but messages only say it was there: a peer's free text may
    // name a patient.
    for o in &outcomes[1..4] {
        assert!(
            matches!(&*fault(o).reason, FaultReason::Status { comment: Some(c), .. } if c == "test status"),
            "{o:?}"
        );
        let message = fault(o).to_string();
        assert!(message.contains("Error Comment withheld (11 characters"), "{message}");
        assert!(!message.contains("test status"), "{message}");
    }
    assert_eq!(outcomes[4].result.as_ref().unwrap().status, 0);
}

#[test]
fn retry_policy_backs_off_exponentially_with_a_cap() {
    let p = RetryPolicy::default();
    assert_eq!((p.max_attempts, p.initial_backoff_s, p.max_backoff_s), (10, 5, 600));
    let secs: Vec<u64> = (0..10).map(|a| p.delay(a).as_secs()).collect();
    assert_eq!(secs, [0, 5, 10, 20, 40, 80, 160, 320, 600, 600]);
    assert_eq!(p.delay(u32::MAX), Duration::from_secs(600));
    assert!(!p.exhausted(9));
    assert!(p.exhausted(10));
    let custom: RetryPolicy = toml::from_str("max_attempts = 2\ninitial_backoff_s = 1\nmax_backoff_s = 3\n").unwrap();
    custom.validate().unwrap();
    assert_eq!(
        (1..5).map(|a| custom.delay(a).as_secs()).collect::<Vec<_>>(),
        [1, 2, 3, 3]
    );
    assert!(custom.exhausted(2));
    let bad = RetryPolicy {
        max_attempts: 0,
        ..RetryPolicy::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("max_attempts"));
}

/// A throw-away PKI made with the `openssl` command: a CA, a certificate for the PACS
/// (`localhost`, 127.0.0.1), one for the node, an unrelated CA and a "stranger" certificate it
/// signed.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(work: &Path) -> Self {
        let dir = work.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new(tool("openssl"))
                .current_dir(&dir)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=fcdnode test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        std::fs::write(
            dir.join("leaf.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        for (leaf, ca) in [("pacs", "ca"), ("node", "ca"), ("stranger", "other-ca")] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{leaf}.key"),
                "-out",
                &format!("{leaf}.csr"),
                "-subj",
                &format!("/CN={leaf}"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                &format!("{leaf}.pem"),
            ]);
        }
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// `[destinations.tls]` trusting `ca`, presenting the node's certificate when `client`.
    fn settings(&self, ca: &str, client: bool) -> TlsSettings {
        TlsSettings {
            ca: self.dir.join(ca),
            certificate: client.then(|| self.dir.join("node.pem")),
            private_key: client.then(|| self.dir.join("node.key")),
            server_name: None,
        }
    }

    /// storescp in `work` as a TLS listener with the PACS certificate, requiring a client
    /// certificate signed by `ca.pem`.
    fn storescp(&self, work: &Path) -> StoreScp {
        let (key, cert, ca) = (self.path("pacs.key"), self.path("pacs.pem"), self.path("ca.pem"));
        StoreScp::start(work, &["+tls", &key, &cert, "+cf", &ca])
    }
}

#[test]
fn tls_destination_with_client_certificate_gets_every_file() {
    let f = fixture();
    let pki = Pki::new(f.tmp.path());
    let scp = pki.storescp(f.tmp.path());
    let dest = Destination {
        tls: Some(pki.settings("ca.pem", true)),
        ..scp.destination()
    };
    dest.validate().unwrap();
    let files = f.uncompressed();
    let outcomes = block_on(send(&dest, "FCDNODE", &files)).unwrap_or_else(|e| panic!("{e}\n{}", scp.log_text()));
    assert_eq!(ok(&outcomes).len(), files.len(), "{outcomes:?}\n{}", scp.log_text());
    let sent: BTreeSet<String> = files.iter().map(|p| sop_uid(&open_file(p).unwrap())).collect();
    assert_eq!(scp.received().keys().cloned().collect::<BTreeSet<_>>(), sent);
    // The same storescp, reached by the name in its certificate instead of the address.
    let by_name = Destination {
        host: "localhost".into(),
        tls: Some(TlsSettings {
            server_name: Some("localhost".into()),
            ..pki.settings("ca.pem", true)
        }),
        ..scp.destination()
    };
    let outcomes = block_on(send(&by_name, "FCDNODE", &f.mr[..1])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok(&outcomes).len(), 1, "{outcomes:?}");
}

#[test]
fn tls_faults_are_permanent_and_say_why() {
    let f = fixture();
    let pki = Pki::new(f.tmp.path());
    let scp = pki.storescp(f.tmp.path());
    let plain = StoreScp::start(&f.tmp.path().join("plain"), &[]);
    let cases = [
        (
            "untrusted PACS certificate",
            pki.settings("other-ca.pem", true),
            scp.port,
            "certificate",
        ),
        (
            "wrong server name",
            TlsSettings {
                server_name: Some("pacs.example.org".into()),
                ..pki.settings("ca.pem", true)
            },
            scp.port,
            "certificate",
        ),
        ("no client certificate", pki.settings("ca.pem", false), scp.port, "TLS"),
        ("plain DICOM peer", pki.settings("ca.pem", true), plain.port, "TLS"),
    ];
    for (what, tls, port, needle) in cases {
        let dest = Destination {
            port,
            tls: Some(tls),
            ..scp.destination()
        };
        dest.validate().unwrap();
        let fault = match block_on(send(&dest, "FCDNODE", &f.mr[..1])) {
            Err(fault) => fault,
            Ok(outcomes) => fault(&outcomes[0]).clone(),
        };
        eprintln!("{what}: {fault}");
        assert!(matches!(*fault.reason, FaultReason::Tls { .. }), "{what}: {fault:?}");
        assert_eq!(fault.kind(), FaultKind::Permanent, "{what}: {fault}");
        assert!(fault.to_string().contains(needle), "{what}: {fault}");
    }
    assert!(scp.received().is_empty() && plain.received().is_empty());
}

#[test]
fn tls_settings_errors_name_the_key() {
    let tmp = tempdir();
    let pki = Pki::new(tmp.path());
    let base = Destination::new("secure", "PACS", "127.0.0.1", 11112);
    let cases = [
        (pki.settings("absent.pem", true), "`ca`"),
        (
            TlsSettings {
                private_key: None,
                ..pki.settings("ca.pem", true)
            },
            "`private_key`",
        ),
        (
            TlsSettings {
                private_key: Some(pki.dir.join("pacs.key")),
                ..pki.settings("ca.pem", true)
            },
            "`private_key`",
        ),
        (
            TlsSettings {
                certificate: Some(pki.dir.join("ca.key")),
                ..pki.settings("ca.pem", true)
            },
            "`certificate`",
        ),
    ];
    for (tls, field) in cases {
        let dest = Destination {
            tls: Some(tls),
            ..base.clone()
        };
        let err = dest.validate().unwrap_err().to_string();
        assert!(
            err.contains(field) && err.contains("destination \"secure\""),
            "{field}: {err}"
        );
        let fault = block_on(send(&dest, "FCDNODE", &[])).unwrap_err();
        assert_eq!(fault.kind(), FaultKind::Permanent, "{fault}");
    }
}

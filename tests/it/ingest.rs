//! The DICOM SCP against real DCMTK peers (echoscu, storescu) and hand-made hostile peers on raw
//! sockets: AE checks, presentation contexts, transfer syntaxes, sink statuses, reassembly,
//! oversized PDUs, lying element lengths (bounded memory), silent peers, association limits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, open_file};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::pdu::{
    AssociationRQ, PDataValue, PDataValueType, Pdu, PresentationContextProposed, PresentationContextResultReason,
    UserVariableItem,
};
use fcdnode::ingest::{
    self, IngestError, IngestStats, InstanceSink, OtherStorage, ReceivedInstance, ScpConfig, StoreOutcome,
    check_element_lengths,
};
use fcdnode::synth::dicom::{DicomOptions, SeriesInfo, write_series};
use fcdnode::volume::Volume;
use fcdnode::volume::{Plane, acquisition_grid};

use crate::node::wait_until;
use crate::util::{fcdnode, run_ok, tempdir, tool};

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
const VERIFICATION: &str = "1.2.840.10008.1.1";
const IMPLICIT: &str = "1.2.840.10008.1.2";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
const RLE: &str = "1.2.840.10008.1.2.5";

// ---------------------------------------------------------------------------------------------
// Harness: a sink that writes into a temp dir, an in-process SCP on a multi-thread runtime.

/// Parses each instance with dicom-object (as the spool will), writes its data set to
/// `<SOP Instance UID>.bin` and remembers what came.
struct DirSink {
    dir: tempfile::TempDir,
    fail: Option<u16>,
    received: Mutex<Vec<ReceivedInstance>>,
}

impl DirSink {
    fn new(fail: Option<u16>) -> Self {
        Self {
            dir: tempdir(),
            fail,
            received: Mutex::new(Vec::new()),
        }
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The stored data set of `uid` (read back from disk) and its transfer syntax.
    fn stored(&self, uid: &str) -> (Vec<u8>, String) {
        let received = self.received.lock().unwrap();
        let instance = received
            .iter()
            .find(|i| i.sop_instance_uid == uid)
            .unwrap_or_else(|| panic!("{uid} never reached the sink"));
        let bytes = std::fs::read(self.dir.path().join(format!("{uid}.bin"))).unwrap();
        (bytes, instance.transfer_syntax.clone())
    }
}

impl InstanceSink for DirSink {
    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        if let Some(status) = self.fail {
            return StoreOutcome::Failed {
                status,
                reason: "test sink refuses everything".into(),
            };
        }
        let mut bytes = Vec::new();
        if let Err(e) = instance.dataset.reader().and_then(|mut r| r.read_to_end(&mut bytes)) {
            return StoreOutcome::Failed {
                status: 0xA700,
                reason: e.to_string(),
            };
        }
        if let Err(reason) = parse_dataset(&bytes, &instance.transfer_syntax) {
            return StoreOutcome::Failed { status: 0xC000, reason };
        }
        let path = self.dir.path().join(format!("{}.bin", instance.sop_instance_uid));
        if let Err(e) = std::fs::write(&path, &bytes) {
            return StoreOutcome::Failed {
                status: 0xA700,
                reason: e.to_string(),
            };
        }
        let mut received = self.received.lock().unwrap();
        received.push(ReceivedInstance {
            dataset: Vec::new().into(),
            ..instance
        });
        StoreOutcome::Stored
    }
}

/// The SCP serving on 127.0.0.1:<ephemeral> until dropped.
struct Scp {
    addr: SocketAddr,
    port: String,
    stats: Arc<IngestStats>,
    sink: Arc<DirSink>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), IngestError>>>,
    rt: Option<tokio::runtime::Runtime>,
}

fn config() -> ScpConfig {
    ScpConfig {
        read_timeout_s: 10,
        ..ScpConfig::default()
    }
}

impl Scp {
    fn start(config: ScpConfig, sink: DirSink) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(IngestStats::default());
        let sink = Arc::new(sink);
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let dyn_sink: Arc<dyn InstanceSink> = sink.clone();
        let task = rt.spawn(ingest::serve(
            listener,
            Arc::new(config.check().expect("valid [scp]")),
            dyn_sink,
            stats.clone(),
            rx,
        ));
        Self {
            addr,
            port: addr.port().to_string(),
            stats,
            sink,
            shutdown,
            task: Some(task),
            rt: Some(rt),
        }
    }

    /// A DCMTK tool aimed at this SCP, with Nagle off and bounded timeouts.
    fn dcmtk(&self, name: &str, calling: &str, called: &str) -> Command {
        let mut cmd = Command::new(tool(name));
        cmd.env("TCP_NODELAY", "1")
            .args(["-aet", calling, "-aec", called, "-to", "20", "-ta", "20", "-td", "60"]);
        cmd
    }

    fn echo(&self, calling: &str) -> Output {
        self.dcmtk("echoscu", calling, "FCDNODE")
            .args(["127.0.0.1", &self.port])
            .output()
            .unwrap()
    }

    fn store(&self, calling: &str, called: &str, options: &[&str], files: &[PathBuf]) -> Output {
        self.dcmtk("storescu", calling, called)
            .arg("-v")
            .args(options)
            .args(["127.0.0.1", &self.port])
            .args(files)
            .output()
            .unwrap()
    }
}

impl Drop for Scp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let (Some(rt), Some(task)) = (self.rt.take(), self.task.take()) {
            let result = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await });
            if !std::thread::panicking() {
                let finished = result.expect("serve did not stop after shutdown");
                finished.expect("serve panicked").expect("serve failed");
            }
        }
    }
}

/// Counters are bumped by the SCP right after it closes a connection, so a peer can see the
/// close first: wait (up to 5 s) until `check` holds for the snapshot, then return it.
fn stats_when(scp: &Scp, check: impl Fn(&ingest::IngestStatsSnapshot) -> bool) -> ingest::IngestStatsSnapshot {
    for _ in 0..50 {
        let stats = scp.stats.snapshot();
        if check(&stats) {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    scp.stats.snapshot()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A small axial MR series (16×16×`slices`, integer pattern) written by the synthetic writer.
fn small_series(dir: &Path, transfer_syntax: &str, slices: usize, seed: u64) -> Vec<PathBuf> {
    let grid = acquisition_grid(Plane::Axial, [4.0; 3], [64.0, 64.0, 4.0 * slices as f64], [0.0; 3]).unwrap();
    let mut volume = Volume::filled(&grid, 0.0).unwrap();
    for ((i, j, k), v) in volume.data_mut().indexed_iter_mut() {
        *v = (100 + (i * 37 + j * 11 + k * 101) % 900) as f32;
    }
    let options = DicomOptions {
        transfer_syntax: transfer_syntax.into(),
        seed,
        ..DicomOptions::default()
    };
    write_series(&volume, &SeriesInfo::new(seed), &options, dir).unwrap_or_else(|e| panic!("{e}"))
}

/// The data set bytes of a Part 10 file (after the file meta group) and its transfer syntax.
fn dataset_of(path: &Path) -> (Vec<u8>, String) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[128..132], b"DICM", "{}", path.display());
    assert_eq!(
        &bytes[132..138],
        &[2, 0, 0, 0, b'U', b'L'],
        "{}: no group length",
        path.display()
    );
    let meta_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let ts = open_file(path)
        .unwrap()
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned();
    (bytes[144 + meta_len..].to_vec(), ts)
}

/// Parses a data set as received (inflating the deflated syntax); also the transfer syntax the
/// inflated bytes are in.
fn parse_dataset(bytes: &[u8], ts_uid: &str) -> Result<(InMemDicomObject, &'static str), String> {
    let (bytes, parse_ts) = if ts_uid == DEFLATED {
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(bytes)
            .read_to_end(&mut inflated)
            .map_err(|e| e.to_string())?;
        (inflated, EXPLICIT)
    } else {
        let known = [IMPLICIT, EXPLICIT, JPEG_LS, JPEG_LOSSLESS_SV1, RLE];
        let ts = known
            .into_iter()
            .find(|t| *t == ts_uid)
            .ok_or(format!("unexpected {ts_uid}"))?;
        (bytes.to_vec(), ts)
    };
    let ts = TransferSyntaxRegistry.get(parse_ts).ok_or(format!("no {parse_ts}"))?;
    let object = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts).map_err(|e| e.to_string())?;
    Ok((object, parse_ts))
}

/// Parses a received data set into an object with a file meta group, so its pixel data can be
/// decoded.
fn parse_received(bytes: &[u8], ts_uid: &str) -> dicom_object::DefaultDicomObject {
    let (object, parse_ts) = parse_dataset(bytes, ts_uid).unwrap();
    let class = object
        .element(tags::SOP_CLASS_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let instance = object
        .element(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(parse_ts)
                .media_storage_sop_class_uid(class)
                .media_storage_sop_instance_uid(instance),
        )
        .unwrap()
}

fn sop_instance_uid(object: &InMemDicomObject) -> String {
    object
        .element(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_owned()
}

/// Every file reached the sink under its SOP Instance UID, in `expected_ts`, with the same
/// decoded pixels.
fn assert_received(scp: &Scp, files: &[PathBuf], expected_ts: &str, label: &str) {
    for file in files {
        let sent = open_file(file).unwrap();
        let uid = sop_instance_uid(&sent);
        let (bytes, ts) = scp.sink.stored(&uid);
        assert_eq!(ts, expected_ts, "{label}: {}", file.display());
        check_element_lengths(&bytes, &ts).unwrap_or_else(|e| panic!("{label}: {e}"));
        let got = parse_received(&bytes, &ts);
        assert_eq!(sop_instance_uid(&got), uid, "{label}");
        let sent_pixels = sent.decode_pixel_data().unwrap();
        let got_pixels = got
            .decode_pixel_data()
            .unwrap_or_else(|e| panic!("{label}: decode: {e}"));
        assert!(
            sent_pixels.data() == got_pixels.data(),
            "{label}: pixel data of {uid} differs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// DCMTK peers.

#[test]
fn echoscu_gets_an_answer() {
    let scp = Scp::start(config(), DirSink::new(None));
    let out = scp.echo("ECHOSCU");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(scp.stats.echo_requests.load(Ordering::Relaxed), 1);
    assert_eq!(scp.stats.associations_accepted.load(Ordering::Relaxed), 1);
}

#[test]
fn storescu_delivers_a_whole_flair_series() {
    let tmp = tempdir();
    let out = tmp.path().join("cohort");
    run_ok(fcdnode().args(["synth", "--out"]).arg(&out).args([
        "--subjects",
        "1",
        "--dicom",
        "--voxel-mm",
        "4",
        "--no-preview",
    ]));
    let series = out.join("dicom/sub-00001/FLAIR");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&series).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() > 20, "{} files", files.len());
    let scp = Scp::start(config(), DirSink::new(None));
    let result = scp.store("PACS", "FCDNODE", &[], &files);
    assert!(result.status.success(), "{}", text(&result));
    assert_eq!(scp.sink.count(), files.len());
    assert_received(&scp, &files, EXPLICIT, "FLAIR");
    let stats = scp.stats.snapshot();
    assert_eq!(stats.instances_stored, files.len() as u64);
    assert_eq!(stats.instances_failed, 0);
    let sent: u64 = files.iter().map(|f| dataset_of(f).0.len() as u64).sum();
    assert!(stats.bytes_received >= sent, "{} < {sent}", stats.bytes_received);
}

#[test]
fn storescu_with_several_transfer_syntaxes() {
    let tmp = tempdir();
    let plain = small_series(&tmp.path().join("explicit"), EXPLICIT, 3, 21);
    let jpeg_ls = small_series(&tmp.path().join("jpegls"), JPEG_LS, 3, 22);
    // DCMTK-compressed copies: JPEG lossless (first-order prediction) and RLE.
    let mut jpeg = Vec::new();
    let mut rle = Vec::new();
    let other = small_series(&tmp.path().join("for-dcmtk"), EXPLICIT, 3, 23);
    for (i, file) in other.iter().enumerate() {
        let j = tmp.path().join(format!("jpeg-{i}.dcm"));
        run_ok(Command::new(tool("dcmcjpeg")).arg(file).arg(&j));
        jpeg.push(j);
    }
    let other = small_series(&tmp.path().join("for-rle"), EXPLICIT, 3, 24);
    for (i, file) in other.iter().enumerate() {
        let r = tmp.path().join(format!("rle-{i}.dcm"));
        run_ok(Command::new(tool("dcmcrle")).arg(file).arg(&r));
        rle.push(r);
    }
    assert_eq!(dataset_of(&jpeg[0]).1, JPEG_LOSSLESS_SV1);
    assert_eq!(dataset_of(&rle[0]).1, RLE);

    let scp = Scp::start(config(), DirSink::new(None));
    let cases: [(&str, &[&str], &[PathBuf], &str); 6] = [
        ("implicit", &["-xi"], &plain, IMPLICIT),
        ("explicit", &["-xe"], &plain, EXPLICIT),
        ("deflated", &["-xd"], &plain, DEFLATED),
        ("jpeg-ls", &["-xt"], &jpeg_ls, JPEG_LS),
        ("jpeg lossless", &["-xs"], &jpeg, JPEG_LOSSLESS_SV1),
        ("rle", &["-xr"], &rle, RLE),
    ];
    for (label, options, files, ts) in cases {
        let before = scp.sink.count();
        let out = scp.store("PACS", "FCDNODE", options, files);
        assert!(out.status.success(), "{label}: {}", text(&out));
        assert_eq!(scp.sink.count(), before + files.len(), "{label}: {}", text(&out));
        assert_received(&scp, files, ts, label);
        // The same instances again (next case) must not be confused with these: clear them.
        scp.sink.received.lock().unwrap().clear();
    }
    assert_eq!(scp.stats.snapshot().instances_failed, 0);
}

/// A storescu configuration proposing 120 presentation contexts (Verification, MR and 118
/// others) with 8 transfer syntaxes each, as a modality with a long storage list does: an
/// A-ASSOCIATE-RQ of about 30 KB, over the default `max_pdu` of 16 KiB.
fn many_contexts_config(path: &Path) -> usize {
    let syntaxes = [
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.100",
        // The first the node decodes is chosen: one storescu can send these files in.
        EXPLICIT,
        IMPLICIT,
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.90",
    ];
    let mut uids = vec![VERIFICATION.to_owned(), MR.to_owned()];
    uids.extend((2..120).map(|i| format!("1.2.826.0.1.3680043.10.1.99.{i}")));
    let mut text = String::from("[[TransferSyntaxes]]\n[Eight]\n");
    for (i, ts) in syntaxes.iter().enumerate() {
        text += &format!("TransferSyntax{} = {ts}\n", i + 1);
    }
    text += "[[PresentationContexts]]\n[Many]\n";
    for (i, uid) in uids.iter().enumerate() {
        text += &format!("PresentationContext{} = {uid}\\Eight\n", i + 1);
    }
    text += "[[Profiles]]\n[Big]\nPresentationContexts = Many\n";
    std::fs::write(path, text).unwrap();
    // The same request as dicom-ul encodes it, for its size.
    let rq = Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "STORESCU".into(),
        called_ae_title: "FCDNODE".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: uids
            .iter()
            .enumerate()
            .map(|(i, uid)| PresentationContextProposed {
                id: (2 * i + 1) as u8,
                abstract_syntax: uid.clone(),
                transfer_syntaxes: syntaxes.iter().map(|t| t.to_string()).collect(),
            })
            .collect(),
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut bytes = Vec::new();
    dicom_ul::write_pdu(&mut bytes, &rq).unwrap();
    bytes.len()
}

#[test]
fn storescu_proposing_120_contexts_of_8_syntaxes_is_accepted() {
    let tmp = tempdir();
    let files = small_series(tmp.path(), EXPLICIT, 2, 81);
    let cfg = tmp.path().join("many.cfg");
    let rq_bytes = many_contexts_config(&cfg);
    assert!(
        rq_bytes > 16384 + 6,
        "the request ({rq_bytes} bytes) would fit in max_pdu"
    );
    let scp = Scp::start(config(), DirSink::new(None));
    let cfg = cfg.to_string_lossy().into_owned();
    let out = scp.store("MODALITY", "FCDNODE", &["-d", "-xf", &cfg, "Big"], &files);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("Context ID:        239 (Proposed)"),
        "not 120 contexts: {all}"
    );
    assert_eq!(scp.sink.count(), files.len(), "{all}");
    assert_received(&scp, &files, EXPLICIT, "120 contexts");
    let stats = stats_when(&scp, |s| s.associations_accepted == 1);
    assert_eq!((stats.associations_accepted, stats.associations_rejected), (1, 0));
}

/// An HTTP request where the A-ASSOCIATE-RQ belongs gets an A-ABORT (service provider,
/// unrecognized PDU) that can be read before the close, not a reset; the SCP serves on.
#[test]
fn a_garbage_first_pdu_gets_an_a_abort_not_a_reset() {
    let scp = Scp::start(config(), DirSink::new(None));
    let mut raw = Raw::connect(scp.addr);
    raw.stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: fcdnode\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let read = raw.stream.read_to_end(&mut answer);
    assert!(read.is_ok(), "{read:?} after {answer:02X?}");
    assert_eq!(
        answer,
        [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 1],
        "A-ABORT, service provider, unrecognized PDU"
    );
    let out = scp.echo("ECHOSCU");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn unknown_calling_and_wrong_called_ae_titles_are_rejected() {
    let tmp = tempdir();
    let files = small_series(tmp.path(), EXPLICIT, 1, 31);
    let scp = Scp::start(
        ScpConfig {
            allowed_calling: vec![
                "PACS".into(),
                "LOCALPACS@127.0.0.1".into(),
                "REMOTEPACS@192.0.2.7".into(),
            ],
            ..config()
        },
        DirSink::new(None),
    );
    for calling in ["PACS", "LOCALPACS"] {
        let out = scp.store(calling, "FCDNODE", &[], &files);
        assert!(out.status.success(), "{calling}: {}", text(&out));
    }
    for calling in ["INTRUDER", "REMOTEPACS"] {
        let out = scp.store(calling, "FCDNODE", &[], &files);
        let all = text(&out);
        assert!(!out.status.success(), "{calling}: {all}");
        assert!(all.contains("Calling AE Title Not Recognized"), "{calling}: {all}");
        assert!(all.contains("Rejected Permanent"), "{calling}: {all}");
    }
    let out = scp.store("PACS", "SOMEONEELSE", &[], &files);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("Called AE Title Not Recognized"), "{all}");
    let stats = stats_when(&scp, |s| s.associations_rejected >= 3);
    assert_eq!(stats.associations_rejected, 3);
    assert_eq!(stats.instances_stored, 2);
}

/// An MR file relabelled as Secondary Capture.
fn secondary_capture(mr: &Path, out: &Path) {
    let object = open_file(mr).unwrap();
    let uid = sop_instance_uid(&object);
    let mut dataset = object.into_inner();
    dataset.put(DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(SC)));
    dataset
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT)
                .media_storage_sop_class_uid(SC)
                .media_storage_sop_instance_uid(uid),
        )
        .unwrap()
        .write_to_file(out)
        .unwrap();
}

#[test]
fn other_storage_classes_are_refused_or_discarded() {
    let tmp = tempdir();
    let mr = small_series(&tmp.path().join("mr"), EXPLICIT, 1, 41);
    let sc = tmp.path().join("sc.dcm");
    secondary_capture(&mr[0], &sc);

    let refusing = Scp::start(config(), DirSink::new(None));
    let out = refusing.store("PACS", "FCDNODE", &[], std::slice::from_ref(&sc));
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("No presentation context"), "{all}");
    assert_eq!(refusing.sink.count(), 0);

    let discarding = Scp::start(
        ScpConfig {
            other_storage: OtherStorage::Discard,
            ..config()
        },
        DirSink::new(None),
    );
    let out = discarding.store("PACS", "FCDNODE", &[], &[sc.clone(), mr[0].clone()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(discarding.sink.count(), 1, "only the MR instance is stored");
    let stats = discarding.stats.snapshot();
    assert_eq!((stats.instances_discarded, stats.instances_stored), (1, 1));
}

#[test]
fn a_failing_sink_status_reaches_storescu() {
    let tmp = tempdir();
    let files = small_series(tmp.path(), EXPLICIT, 1, 51);
    let scp = Scp::start(config(), DirSink::new(Some(0xA700)));
    // -d prints the whole C-STORE-RSP, status and error comment included.
    let out = scp.store("PACS", "FCDNODE", &["-d"], &files);
    let all = text(&out).to_lowercase();
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("0xa700"), "{all}");
    assert!(all.contains("test sink refuses everything"), "error comment: {all}");
    assert_eq!(scp.stats.snapshot().instances_failed, 1);
}

// ---------------------------------------------------------------------------------------------
// Raw-socket peers.

/// A requestor on a plain socket speaking PDUs built by dicom-ul's writer.
pub(crate) struct Raw {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Raw {
    pub(crate) fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Associates with Verification and MR (explicit VR LE) on contexts 1 and 3.
    pub(crate) fn associate(addr: SocketAddr, max_pdu: u32) -> Self {
        let mut raw = Self::connect(addr);
        raw.send(&Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "RAWSCU".into(),
            called_ae_title: "FCDNODE".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: vec![
                PresentationContextProposed {
                    id: 1,
                    abstract_syntax: VERIFICATION.into(),
                    transfer_syntaxes: vec![IMPLICIT.into()],
                },
                PresentationContextProposed {
                    id: 3,
                    abstract_syntax: MR.into(),
                    transfer_syntaxes: vec![EXPLICIT.into()],
                },
            ],
            user_variables: vec![
                UserVariableItem::MaxLength(max_pdu),
                UserVariableItem::ImplementationClassUID("1.2.826.0.1.3680043.10.1".into()),
            ],
        }));
        match raw.receive() {
            Some(Pdu::AssociationAC(ac)) => {
                assert!(
                    ac.presentation_contexts
                        .iter()
                        .all(|pc| pc.reason == PresentationContextResultReason::Acceptance),
                    "{ac:?}"
                );
            }
            other => panic!("expected A-ASSOCIATE-AC, got {other:?}"),
        }
        raw
    }

    pub(crate) fn send(&mut self, pdu: &Pdu) {
        let mut bytes = Vec::new();
        dicom_ul::write_pdu(&mut bytes, pdu).unwrap();
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next PDU, or None at end of stream / reset.
    pub(crate) fn receive(&mut self) -> Option<Pdu> {
        loop {
            let mut cursor = std::io::Cursor::new(&self.buffer[..]);
            if let Some(pdu) = dicom_ul::read_pdu(&mut cursor, dicom_ul::pdu::MAXIMUM_PDU_SIZE, false).unwrap() {
                let used = cursor.position() as usize;
                self.buffer.drain(..used);
                return Some(pdu);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("receive: {e}"),
            }
        }
    }

    /// Whether the server closed the connection (EOF or reset) before our read timeout.
    pub(crate) fn closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    pub(crate) fn pdata(&mut self, values: Vec<PDataValue>) {
        self.send(&Pdu::PData { data: values });
    }

    /// The next DIMSE response: (status, error comment).
    pub(crate) fn response(&mut self) -> (u16, String) {
        let mut command = Vec::new();
        loop {
            match self.receive() {
                Some(Pdu::PData { data }) => {
                    for pdv in data {
                        assert_eq!(pdv.value_type, PDataValueType::Command);
                        command.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            let ts = TransferSyntaxRegistry.get(IMPLICIT).unwrap();
                            let object = InMemDicomObject::read_dataset_with_ts(&command[..], ts).unwrap();
                            let status = object.element(tags::STATUS).unwrap().to_int::<u16>().unwrap();
                            let comment = object
                                .element_opt(tags::ERROR_COMMENT)
                                .unwrap()
                                .map(|e| e.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            return (status, comment);
                        }
                    }
                }
                other => panic!("expected a P-DATA response, got {other:?}"),
            }
        }
    }

    pub(crate) fn release(&mut self) {
        self.send(&Pdu::ReleaseRQ);
        assert_eq!(self.receive(), Some(Pdu::ReleaseRP));
    }
}

pub(crate) fn pdv(pc: u8, value_type: PDataValueType, is_last: bool, data: &[u8]) -> PDataValue {
    PDataValue {
        presentation_context_id: pc,
        value_type,
        is_last,
        data: data.to_vec(),
    }
}

/// An Implicit VR LE request command set.
pub(crate) fn command(
    field: u16,
    message_id: u16,
    sop_class: &str,
    sop_instance: Option<&str>,
    with_data: bool,
) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, element: u16, value: &[u8]) {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    fn uid(value: &str) -> Vec<u8> {
        let mut v = value.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        v
    }
    let mut body = Vec::new();
    put(&mut body, 0x0002, &uid(sop_class));
    put(&mut body, 0x0100, &field.to_le_bytes());
    put(&mut body, 0x0110, &message_id.to_le_bytes());
    put(&mut body, 0x0700, &0u16.to_le_bytes());
    put(
        &mut body,
        0x0800,
        &(if with_data { 0u16 } else { 0x0101 }).to_le_bytes(),
    );
    if let Some(instance) = sop_instance {
        put(&mut body, 0x1000, &uid(instance));
    }
    let mut out = Vec::new();
    put(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

pub(crate) fn echo(raw: &mut Raw, message_id: u16) -> u16 {
    let rq = command(0x0030, message_id, VERIFICATION, None, false);
    raw.pdata(vec![pdv(1, PDataValueType::Command, true, &rq)]);
    raw.response().0
}

#[test]
fn fragmented_commands_and_data_sets_are_reassembled() {
    let tmp = tempdir();
    let files = small_series(tmp.path(), EXPLICIT, 1, 61);
    let (dataset, _) = dataset_of(&files[0]);
    let uid = sop_instance_uid(&open_file(&files[0]).unwrap());
    let scp = Scp::start(config(), DirSink::new(None));
    let mut raw = Raw::associate(scp.addr, 16384);
    let rq = command(0x0001, 42, MR, Some(&uid), true);
    // The command in three fragments over two PDUs; the data set in 100-byte fragments, several
    // per PDU, the first data fragments sharing a PDU with the last command fragment.
    let (a, rest) = rq.split_at(10);
    let (b, c) = rest.split_at(20);
    raw.pdata(vec![pdv(3, PDataValueType::Command, false, a)]);
    let chunks: Vec<&[u8]> = dataset.chunks(100).collect();
    let mut first = vec![
        pdv(3, PDataValueType::Command, false, b),
        pdv(3, PDataValueType::Command, true, c),
    ];
    first.extend(chunks[..3].iter().map(|d| pdv(3, PDataValueType::Data, false, d)));
    raw.pdata(first);
    for (i, group) in chunks[3..].chunks(7).enumerate() {
        let last_group = (i + 1) * 7 >= chunks.len() - 3;
        let n = group.len();
        let values = group
            .iter()
            .enumerate()
            .map(|(j, d)| pdv(3, PDataValueType::Data, last_group && j + 1 == n, d))
            .collect();
        raw.pdata(values);
    }
    let (status, comment) = raw.response();
    assert_eq!(status, 0x0000, "{comment}");
    let (stored, ts) = scp.sink.stored(&uid);
    assert_eq!(ts, EXPLICIT);
    assert!(stored == dataset, "the sink got different bytes");

    // An operation the SCP does not offer (C-FIND-RQ with an identifier) → 0x0211, and the
    // association goes on.
    let find = command(0x0020, 43, MR, None, true);
    raw.pdata(vec![
        pdv(3, PDataValueType::Command, true, &find),
        pdv(3, PDataValueType::Data, true, &dataset[..64]),
    ]);
    assert_eq!(raw.response().0, 0x0211);
    assert_eq!(echo(&mut raw, 44), 0x0000);
    raw.release();
}

#[test]
fn a_pdu_over_the_negotiated_maximum_is_aborted() {
    let mut config = config();
    config.max_pdu = 4096;
    let scp = Scp::start(config, DirSink::new(None));
    let mut raw = Raw::associate(scp.addr, 16384);
    assert_eq!(echo(&mut raw, 1), 0x0000, "the association works before");
    // A P-DATA-TF header claiming 1 MB, followed by a little data.
    let mut bytes = vec![0x04, 0x00];
    bytes.extend_from_slice(&1_000_000u32.to_be_bytes());
    bytes.extend_from_slice(&[0u8; 1000]);
    raw.stream.write_all(&bytes).unwrap();
    match raw.receive() {
        Some(Pdu::AbortRQ { .. }) => {}
        other => panic!("expected A-ABORT, got {other:?}"),
    }
    assert!(raw.closed_by_peer(), "connection still open after the abort");
    assert_eq!(scp.stats.snapshot().associations_aborted, 1);
    // The SCP keeps serving.
    let out = scp.echo("ECHOSCU");
    assert!(out.status.success(), "{}", text(&out));
}

const CHILD: &str = "FCDNODE_IT_INGEST_RSS_CHILD";

/// Peak resident set size of this process in kB (VmHWM).
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs `test` of this binary again in a child process with `var` set to `value` (the child
/// does the work and prints its peak RSS) and returns the child's "peak RSS …" line.
fn peak_rss_line_of_child(test: &str, var: &str, value: &std::ffi::OsStr) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(var, value)
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    all.lines()
        .find_map(|l| l.find("peak RSS").map(|at| l[at..].to_owned()))
        .unwrap_or_else(|| panic!("the child test did not run: {all}"))
}

/// A 2 KB data set whose pixel data claims 4 GiB gets 0xC000 naming the element, the sink never
/// sees it, the association goes on, and the process peak RSS stays bounded. Runs the SCP in a
/// child process (this test binary, re-executed) so other tests cannot disturb the figure.
#[test]
fn an_element_claiming_gigabytes_is_refused_with_bounded_memory() {
    if std::env::var_os(CHILD).is_some() {
        return gigabyte_child();
    }
    let line = peak_rss_line_of_child(
        "ingest::an_element_claiming_gigabytes_is_refused_with_bounded_memory",
        CHILD,
        std::ffi::OsStr::new("1"),
    );
    println!("{line}");
    let growth: u64 = line.rsplit(' ').nth(1).unwrap().parse().unwrap();
    assert!(growth < 200 * 1024, "{line}");
}

fn gigabyte_child() {
    let scp = Scp::start(config(), DirSink::new(None));
    let mut raw = Raw::associate(scp.addr, 16384);
    assert_eq!(echo(&mut raw, 1), 0x0000);
    let uid = "1.2.826.0.1.3680043.10.1.4242";
    let mut dataset = Vec::new();
    let mut short = |tag: (u16, u16), vr: &[u8; 2], value: &[u8]| {
        dataset.extend_from_slice(&tag.0.to_le_bytes());
        dataset.extend_from_slice(&tag.1.to_le_bytes());
        dataset.extend_from_slice(vr);
        dataset.extend_from_slice(&(value.len() as u16).to_le_bytes());
        dataset.extend_from_slice(value);
    };
    short((0x0008, 0x0016), b"UI", b"1.2.840.10008.5.1.4.1.1.4\0");
    short((0x0008, 0x0018), b"UI", b"1.2.826.0.1.3680043.10.1.4242");
    short((0x0028, 0x0010), b"US", &512u16.to_le_bytes());
    short((0x0028, 0x0011), b"US", &512u16.to_le_bytes());
    dataset.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    dataset.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    dataset.extend_from_slice(&[0x55; 2048]);

    let before = peak_rss_kb();
    let rq = command(0x0001, 2, MR, Some(uid), true);
    raw.pdata(vec![
        pdv(3, PDataValueType::Command, true, &rq),
        pdv(3, PDataValueType::Data, true, &dataset),
    ]);
    let (status, comment) = raw.response();
    let after = peak_rss_kb();
    println!(
        "peak RSS before {before} kB, after {after} kB, growth {} kB",
        after.saturating_sub(before)
    );
    assert_eq!(status, 0xC000, "{comment}");
    assert!(comment.contains("(7FE0,0010)"), "{comment}");
    assert!(comment.len() <= 64, "{comment}");
    assert_eq!(scp.sink.count(), 0);
    assert_eq!(echo(&mut raw, 3), 0x0000, "the association goes on");
    raw.release();
    assert_eq!(scp.stats.snapshot().instances_failed, 1);
}

#[test]
fn silent_peers_are_dropped_while_others_are_served() {
    let scp = Scp::start(
        ScpConfig {
            read_timeout_s: 1,
            handshake_timeout_s: 1,
            ..ScpConfig::default()
        },
        DirSink::new(None),
    );
    // Connects and never sends the A-ASSOCIATE-RQ.
    let mut mute = Raw::connect(scp.addr);
    // Associates, then stops talking.
    let mut stalled = Raw::associate(scp.addr, 16384);
    let out = scp.echo("ECHOSCU");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        mute.closed_by_peer(),
        "a peer that never sent A-ASSOCIATE-RQ was not dropped"
    );
    match stalled.receive() {
        Some(Pdu::AbortRQ { .. }) => {}
        other => panic!("expected A-ABORT for a stalled association, got {other:?}"),
    }
    assert!(stalled.closed_by_peer());
    let stats = stats_when(&scp, |s| s.associations_rejected >= 1 && s.associations_aborted >= 1);
    assert_eq!(stats.associations_accepted, 2);
    assert_eq!(stats.associations_rejected, 1);
    assert_eq!(stats.associations_aborted, 1);
}

#[test]
fn shutdown_aborts_idle_associations_and_stops_serving() {
    let mut scp = Scp::start(config(), DirSink::new(None));
    let mut idle = Raw::associate(scp.addr, 16384);
    assert_eq!(echo(&mut idle, 1), 0x0000);
    scp.shutdown.send(true).unwrap();
    match idle.receive() {
        Some(Pdu::AbortRQ { .. }) => {}
        other => panic!("expected A-ABORT on shutdown, got {other:?}"),
    }
    assert!(idle.closed_by_peer());
    let (rt, task) = (scp.rt.take().unwrap(), scp.task.take().unwrap());
    let result = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await });
    result.expect("serve did not return").unwrap().unwrap();
    assert!(TcpStream::connect(scp.addr).is_err(), "still listening after shutdown");
}

#[test]
fn associations_over_the_limit_are_rejected_transiently() {
    let scp = Scp::start(
        ScpConfig {
            max_associations: 1,
            ..config()
        },
        DirSink::new(None),
    );
    let mut held = Raw::associate(scp.addr, 16384);
    let out = scp.echo("ECHOSCU");
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("Rejected Transient") && all.contains("Local Limit Exceeded"),
        "{all}"
    );
    held.release();
    // The slot frees once the released association's task has ended.
    let mut last = String::new();
    for _ in 0..50 {
        let out = scp.echo("ECHOSCU");
        if out.status.success() {
            return;
        }
        last = text(&out);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("echoscu never succeeded after the release: {last}");
}

// ---------------------------------------------------------------------------------------------
// check_element_lengths on real files.

#[test]
fn element_length_check_passes_real_files_and_catches_truncation() {
    let tmp = tempdir();
    let mut files = small_series(&tmp.path().join("explicit"), EXPLICIT, 2, 71);
    files.extend(small_series(&tmp.path().join("jpegls"), JPEG_LS, 2, 72));
    // Enhanced MR: one multi-frame instance with nested functional group sequences.
    let grid = acquisition_grid(Plane::Oblique, [4.0; 3], [48.0, 48.0, 16.0], [0.0; 3]).unwrap();
    let volume = Volume::filled(&grid, 300.0).unwrap();
    let options = DicomOptions {
        enhanced: true,
        ..DicomOptions::default()
    };
    files.extend(write_series(&volume, &SeriesInfo::new(73), &options, &tmp.path().join("enhanced")).unwrap());
    // Implicit VR and deflated copies made by DCMTK.
    let implicit = tmp.path().join("implicit.dcm");
    run_ok(Command::new(tool("dcmconv")).arg("+ti").arg(&files[0]).arg(&implicit));
    let deflated = tmp.path().join("deflated.dcm");
    run_ok(Command::new(tool("dcmconv")).arg("+td").arg(&files[0]).arg(&deflated));
    files.push(implicit);
    files.push(deflated);
    let mut syntaxes = Vec::new();
    for file in &files {
        let (dataset, ts) = dataset_of(file);
        check_element_lengths(&dataset, &ts).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        syntaxes.push(ts.clone());
        if ts == DEFLATED {
            continue;
        }
        // Cut anywhere inside the last element: refused, naming a tag.
        let cut = &dataset[..dataset.len() - 3];
        let err = check_element_lengths(cut, &ts).unwrap_err();
        assert!(
            err.tag.is_some() && err.message.contains('('),
            "{}: {err}",
            file.display()
        );
    }
    for ts in [EXPLICIT, JPEG_LS, IMPLICIT, DEFLATED] {
        assert!(syntaxes.iter().any(|s| s == ts), "{ts} not covered: {syntaxes:?}");
    }
    let enhanced = open_file(&files[4]).unwrap();
    assert_eq!(
        enhanced.meta().media_storage_sop_class_uid().trim_end_matches('\0'),
        "1.2.840.10008.5.1.4.1.1.4.1"
    );
}

const LARGE_CHILD: &str = "FCDNODE_IT_INGEST_LARGE_CHILD";

/// Concurrent large instances stream to the spool: the node's peak RSS grows by far less than
/// what is received, and every byte lands on disk. CI size: 4 × 64 MiB; the long figure
/// (`FCDNODE_LARGE=8x256`) is in the README. The SCP runs in a child process (this test binary,
/// re-executed) with the real spool as its sink, so nothing else moves the figure; the senders
/// are DCMTK `storescu` processes.
#[test]
fn concurrent_large_instances_stream_to_the_spool_with_bounded_memory() {
    if let Some(dir) = std::env::var_os(LARGE_CHILD) {
        return large_child(Path::new(&dir));
    }
    let (count, mb) = match std::env::var("FCDNODE_LARGE") {
        Ok(v) => {
            let (n, m) = v.split_once('x').expect("FCDNODE_LARGE=NxMB");
            (n.parse::<usize>().unwrap(), m.parse::<usize>().unwrap())
        }
        Err(_) => (4, 64),
    };
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("send")).unwrap();
    for n in 0..count {
        write_large_instance(&dir.path().join(format!("send/large-{n}.dcm")), n, mb);
    }
    let line = peak_rss_line_of_child(
        "ingest::concurrent_large_instances_stream_to_the_spool_with_bounded_memory",
        LARGE_CHILD,
        dir.path().as_os_str(),
    );
    println!("{count} x {mb} MiB: {line}");
    let growth: u64 = line.rsplit(' ').nth(1).unwrap().parse().unwrap();
    // Before streaming, each data set was held whole (and copied): ≥ count × mb.
    assert!(growth < 100 * 1024, "{line}");
}

/// An MR image of `mb` MiB (16-bit pixels, 4096 columns).
fn write_large_instance(path: &Path, n: usize, mb: usize) {
    let rows = (mb * 1024 * 1024 / (4096 * 2)) as u16;
    let sop = format!("1.2.826.0.1.3680043.10.1.77.{n}");
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: &str| obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    put(tags::SOP_CLASS_UID, VR::UI, MR);
    put(tags::SOP_INSTANCE_UID, VR::UI, &sop);
    put(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.1.77");
    put(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.1.77.100");
    put(tags::MODALITY, VR::CS, "MR");
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    for (tag, value) in [
        (tags::SAMPLES_PER_PIXEL, 1u16),
        (tags::ROWS, rows),
        (tags::COLUMNS, 4096),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 16),
        (tags::HIGH_BIT, 15),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
    }
    let pixels: Vec<u8> = (0..usize::from(rows) * 4096 * 2).map(|i| (i % 253) as u8).collect();
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(pixels)));
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(EXPLICIT)
            .media_storage_sop_class_uid(MR)
            .media_storage_sop_instance_uid(sop.as_str()),
    )
    .unwrap()
    .write_to_file(path)
    .unwrap();
}

fn large_child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spool = Arc::new(fcdnode::spool::Spool::open(&dir.join("node"), fcdnode::report::DEFAULT_DEVICE_UID).unwrap());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (_shutdown, rx) = tokio::sync::watch::channel(false);
    let sink: Arc<dyn InstanceSink> = spool.clone();
    rt.spawn(ingest::serve(
        listener,
        Arc::new(config().check().unwrap()),
        sink,
        Arc::new(IngestStats::default()),
        rx,
    ));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("send"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let before = peak_rss_kb();
    let senders: Vec<_> = files
        .iter()
        .map(|f| {
            Command::new(tool("storescu"))
                .env("TCP_NODELAY", "1")
                .args(["-aec", "FCDNODE", "-aet", "MRI", "127.0.0.1", &port])
                .arg(f)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for sender in senders {
        let out = sender.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let after = peak_rss_kb();
    let received: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    println!(
        "received {} MiB; peak RSS before {before} kB, after {after} kB, growth {} kB",
        received / (1024 * 1024),
        after.saturating_sub(before)
    );
    assert_eq!(spool.db().instance_count().unwrap(), files.len() as i64);
    for (n, f) in files.iter().enumerate() {
        let sent = std::fs::read(f).unwrap();
        let sop = format!("1.2.826.0.1.3680043.10.1.77.{n}");
        let stored = dir
            .join("node/spool/1.2.826.0.1.3680043.10.1.77/1.2.826.0.1.3680043.10.1.77.100")
            .join(format!("{sop}.dcm"));
        let stored = std::fs::read(&stored).unwrap();
        // Same data set after each file's own meta group (132 + group 2 bytes).
        let body = |b: &[u8]| {
            let meta_len = u32::from_le_bytes(b[140..144].try_into().unwrap()) as usize;
            b[144 + meta_len..].to_vec()
        };
        assert!(body(&sent) == body(&stored), "{sop}: the stored data set differs");
    }
    assert_eq!(
        std::fs::read_dir(spool.staging_dir()).unwrap().count(),
        0,
        "no staging file left"
    );
}

/// `[scp.tls]`: DCMTK's `echoscu` and `storescu` with `+tls` (its three BCP 195 profiles) talk
/// to the TLS port with a client certificate from the configured CA, and `openssl s_client`
/// completes both TLS 1.2 and TLS 1.3 there; no client certificate, a certificate from another
/// CA and plain TCP on the TLS port are refused; the plain port works beside it throughout.
#[test]
fn dicom_tls_port_interoperates_with_dcmtk_and_refuses_the_rest() {
    use fcdnode::ingest::ScpTlsConfig;

    let work = tempdir();
    let pki = crate::deliver::Pki::new(work.path());
    let config = ScpConfig {
        bind: "127.0.0.1:0".into(),
        tls: Some(ScpTlsConfig {
            bind: "127.0.0.1:0".into(),
            certificate: pki.path("node.pem").into(),
            private_key: pki.path("node.key").into(),
            ca: Some(pki.path("ca.pem").into()),
            require_client_certificate: true,
        }),
        ..config()
    };
    let settings = Arc::new(config.check().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listeners = rt.block_on(ingest::bind(&settings)).unwrap();
    let plain_port = listeners.plain.local_addr().unwrap().port().to_string();
    let tls_port = listeners
        .tls
        .as_ref()
        .unwrap()
        .0
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let sink = Arc::new(DirSink::new(None));
    let dyn_sink: Arc<dyn InstanceSink> = sink.clone();
    let (_shutdown, rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(IngestStats::default());
    rt.spawn(ingest::serve(listeners, settings, dyn_sink, stats.clone(), rx));

    let dcmtk = |name: &str, tls: &[&str], port: &str| {
        let mut cmd = Command::new(tool(name));
        cmd.env("TCP_NODELAY", "1")
            .args(tls)
            .args(["-aet", "MRI", "-aec", "FCDNODE", "127.0.0.1", port]);
        cmd
    };
    let (key, cert, ca) = (pki.path("pacs.key"), pki.path("pacs.pem"), pki.path("ca.pem"));
    let with_cert = ["+tls", key.as_str(), cert.as_str(), "+cf", ca.as_str()];
    for profile in ["+py", "+px", "+pz"] {
        let mut args = with_cert.to_vec();
        args.push(profile);
        let out = dcmtk("echoscu", &args, &tls_port).output().unwrap();
        assert!(out.status.success(), "echoscu +tls {profile}: {}", text(&out));
    }
    let files = small_series(work.path(), EXPLICIT, 3, 61);
    let out = dcmtk("storescu", &with_cert, &tls_port).args(&files).output().unwrap();
    assert!(out.status.success(), "storescu +tls: {}", text(&out));
    assert_eq!(sink.count(), 3, "the series came over TLS");

    // Both protocol versions, as openssl's client negotiates them.
    for version in ["-tls1_2", "-tls1_3"] {
        let out = Command::new(tool("openssl"))
            .args(["s_client", version, "-connect", &format!("127.0.0.1:{tls_port}")])
            .args([
                "-cert",
                &cert,
                "-key",
                &key,
                "-CAfile",
                &ca,
                "-verify_return_error",
                "-brief",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let said = text(&out);
        let expected = if version == "-tls1_2" { "TLSv1.2" } else { "TLSv1.3" };
        assert!(said.contains(expected), "openssl s_client {version}: {said}");
    }

    // Refused: no client certificate, another CA's certificate, plain TCP on the TLS port.
    let refused = stats.snapshot().associations_rejected;
    let (stranger_key, stranger_cert) = (pki.path("stranger.key"), pki.path("stranger.pem"));
    for (what, args) in [
        ("no client certificate", vec!["+tla", "+cf", ca.as_str()]),
        (
            "a certificate from another CA",
            vec![
                "+tls",
                stranger_key.as_str(),
                stranger_cert.as_str(),
                "+cf",
                ca.as_str(),
            ],
        ),
        ("plain TCP on the TLS port", vec![]),
    ] {
        let out = dcmtk("echoscu", &args, &tls_port).output().unwrap();
        assert!(!out.status.success(), "{what}: echoscu succeeded: {}", text(&out));
    }
    // Counted when the node's side of the failed handshake ends, which may be just after
    // echoscu has given up.
    wait_until("each refusal counted", Duration::from_secs(10), || {
        stats.snapshot().associations_rejected >= refused + 3
    });
    // The plain port beside it, and the TLS port, still serve.
    assert!(dcmtk("echoscu", &[], &plain_port).output().unwrap().status.success());
    let out = dcmtk("echoscu", &with_cert, &tls_port).output().unwrap();
    assert!(out.status.success(), "after the refusals: {}", text(&out));
}

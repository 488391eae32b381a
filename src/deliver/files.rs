//! Reading outbox files: the file meta information (SOP class, instance, transfer syntax), the
//! data set bytes as stored, and re-encoding of uncompressed data sets into another transfer
//! syntax.

use std::io::{Cursor, Read};
use std::path::Path;

use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTable;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// Why an outbox file cannot be read or re-encoded; the message names the rule or the failing
/// step, and the delivery records it as the fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileError(String);

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

/// What the file meta information says about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Media Storage SOP Class UID.
    pub sop_class: String,
    /// Media Storage SOP Instance UID.
    pub sop_instance: String,
    /// Transfer Syntax UID of the data set.
    pub transfer_syntax: String,
}

/// Whether a data set in `ts` can be decoded and re-encoded in another uncompressed transfer
/// syntax: a known transfer syntax with native (not encapsulated) pixel data.
pub fn transcodable(ts: &str) -> bool {
    TransferSyntaxRegistry
        .get(ts)
        .is_some_and(|t| !t.is_encapsulated_pixel_data() && !t.is_unsupported())
}

/// Parses the file meta group from `reader` (positioned at the start of the file, preamble
/// optional) and returns it with the number of bytes before the data set.
fn read_meta<R: Read>(mut reader: R) -> Result<(FileMetaTable, u64), FileError> {
    let mut head = [0u8; 132];
    let n = read_up_to(&mut reader, &mut head)?;
    let (skip, rest): (u64, &[u8]) = if n >= 132 && &head[128..132] == b"DICM" {
        (128, &head[128..n])
    } else if n >= 4 && &head[..4] == b"DICM" {
        (0, &head[..n])
    } else {
        return Err(FileError("not a DICOM file (no DICM prefix at byte 128 or 0)".into()));
    };
    let mut counted = Counting {
        inner: Cursor::new(rest.to_vec()).chain(reader),
        count: 0,
    };
    let meta =
        FileMetaTable::from_reader(&mut counted).map_err(|e| FileError(format!("file meta information: {e}")))?;
    Ok((meta, skip + counted.count))
}

fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn info_of(meta: &FileMetaTable) -> Result<FileInfo, FileError> {
    let info = FileInfo {
        sop_class: meta.media_storage_sop_class_uid().to_owned(),
        sop_instance: meta.media_storage_sop_instance_uid().to_owned(),
        transfer_syntax: meta.transfer_syntax().to_owned(),
    };
    for (name, value) in [
        ("Media Storage SOP Class UID", &info.sop_class),
        ("Media Storage SOP Instance UID", &info.sop_instance),
        ("Transfer Syntax UID", &info.transfer_syntax),
    ] {
        if value.is_empty() {
            return Err(FileError(format!("{name} (0002,xxxx) is empty")));
        }
    }
    Ok(info)
}

/// Reads only the file meta information of `path`.
pub fn scan(path: &Path) -> Result<FileInfo, FileError> {
    let file = std::fs::File::open(path)?;
    let (meta, _) = read_meta(std::io::BufReader::new(file))?;
    info_of(&meta)
}

/// A whole file in memory: its meta information and where the data set starts.
pub struct Loaded {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Offset of the data set in `bytes`.
    pub dataset_start: usize,
    /// The meta information.
    pub info: FileInfo,
}

impl Loaded {
    /// Reads `path` whole.
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let bytes = std::fs::read(path)?;
        let (meta, start) = read_meta(Cursor::new(&bytes))?;
        let info = info_of(&meta)?;
        let dataset_start = usize::try_from(start)
            .ok()
            .filter(|&s| s <= bytes.len())
            .ok_or_else(|| FileError("file meta group runs past the end of the file".into()))?;
        Ok(Self {
            bytes,
            dataset_start,
            info,
        })
    }

    /// The data set exactly as stored.
    pub fn dataset(&self) -> &[u8] {
        &self.bytes[self.dataset_start..]
    }

    /// The data set decoded and re-encoded in `target_ts`.
    pub fn transcode(&self, target_ts: &str) -> Result<Vec<u8>, FileError> {
        let from = TransferSyntaxRegistry
            .get(&self.info.transfer_syntax)
            .ok_or_else(|| FileError(format!("unknown transfer syntax {}", self.info.transfer_syntax)))?;
        let to = TransferSyntaxRegistry
            .get(target_ts)
            .ok_or_else(|| FileError(format!("unknown transfer syntax {target_ts}")))?;
        if !transcodable(&self.info.transfer_syntax) || !transcodable(target_ts) {
            return Err(FileError(format!(
                "{} → {} needs pixel data (de)compression",
                from.name(),
                to.name()
            )));
        }
        let obj = InMemDicomObject::read_dataset_with_ts(self.dataset(), from)
            .map_err(|e| FileError(format!("cannot decode the data set: {e}")))?;
        let mut out = Vec::with_capacity(self.bytes.len());
        obj.write_dataset_with_ts(&mut out, to)
            .map_err(|e| FileError(format!("cannot encode the data set in {}: {e}", to.name())))?;
        Ok(out)
    }
}

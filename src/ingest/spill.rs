//! Received data sets held in bounded memory: the first [`IN_MEMORY_BYTES`] in a buffer, the
//! rest streamed to an unnamed temporary file in the sink's staging directory, so a peer's
//! instance size (up to `max_instance_mb`) never becomes the node's memory use.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of a data set kept in memory; past this it moves to a file. Sixteen associations
/// each at this bound stay within 16 MiB.
pub const IN_MEMORY_BYTES: usize = 1024 * 1024;

/// A data set as it is received: in memory while small, in an unnamed temporary file (gone
/// when dropped, even after a crash) once it grows past its memory bound.
#[derive(Debug)]
pub struct DataSetBuffer {
    dir: PathBuf,
    limit: usize,
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl DataSetBuffer {
    /// An empty buffer that spills into `dir` past [`IN_MEMORY_BYTES`].
    pub fn new(dir: &Path) -> Self {
        Self::with_limit(dir, IN_MEMORY_BYTES)
    }

    /// An empty buffer that spills into `dir` past `limit` bytes.
    pub fn with_limit(dir: &Path, limit: usize) -> Self {
        Self {
            dir: dir.to_owned(),
            limit,
            memory: Vec::new(),
            file: None,
            len: 0,
        }
    }

    /// An empty buffer with the same staging directory and memory bound.
    pub fn empty_like(&self) -> Self {
        Self::with_limit(&self.dir, self.limit)
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes live in a file (the data set outgrew the memory bound).
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `bytes`, moving everything to a file when the memory bound would be passed.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() > self.limit {
            let mut file = tempfile::tempfile_in(&self.dir)?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(bytes)?,
            None => self.memory.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Copies every byte to `out` (from a file: in the kernel, without passing through memory).
    pub fn copy_to(&self, out: &mut File) -> std::io::Result<u64> {
        match &self.file {
            None => out.write_all(&self.memory).map(|()| self.len),
            Some(file) => {
                let mut file: &File = file;
                file.seek(SeekFrom::Start(0))?;
                std::io::copy(&mut file, out)
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &self.file {
            Some(file) => file.read_exact_at(buf, offset),
            None => {
                let start = usize::try_from(offset).map_err(std::io::Error::other)?;
                let bytes = self
                    .memory
                    .get(start..start + buf.len())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// The bytes when they are in memory.
    pub fn in_memory(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(self.memory.as_slice())
    }

    /// A reader over every byte, from the start.
    pub fn reader(&self) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        Ok(match &self.file {
            None => Box::new(self.memory.as_slice()),
            Some(file) => {
                let mut file: &File = file;
                file.seek(SeekFrom::Start(0))?;
                Box::new(std::io::BufReader::new(file))
            }
        })
    }
}

impl Write for DataSetBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl From<Vec<u8>> for DataSetBuffer {
    /// Bytes already in memory (tests, small objects): never spilled.
    fn from(memory: Vec<u8>) -> Self {
        Self {
            dir: std::env::temp_dir(),
            limit: usize::MAX,
            len: memory.len() as u64,
            memory,
            file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_past_the_bound_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = DataSetBuffer::with_limit(dir.path(), 10);
        buffer.append(b"0123456").unwrap();
        assert!(!buffer.is_spilled());
        buffer.append(b"789abc").unwrap();
        assert!(buffer.is_spilled(), "13 bytes > 10");
        assert_eq!(buffer.in_memory(), None);
        buffer.append(b"def").unwrap();
        assert_eq!(buffer.len(), 16);
        let mut four = [0u8; 4];
        buffer.read_at(6, &mut four).unwrap();
        assert_eq!(&four, b"6789");
        assert!(buffer.read_at(14, &mut four).is_err(), "past the end");
        let mut all = String::new();
        buffer.reader().unwrap().read_to_string(&mut all).unwrap();
        assert_eq!(all, "0123456789abcdef");
        let out_path = dir.path().join("out");
        let mut out = File::create(&out_path).unwrap();
        assert_eq!(buffer.copy_to(&mut out).unwrap(), 16);
        assert_eq!(std::fs::read(&out_path).unwrap(), b"0123456789abcdef");
        // The spill file has no name: nothing is left in the directory but our copy.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn small_data_sets_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = DataSetBuffer::new(dir.path());
        buffer.append(&[7; 1000]).unwrap();
        assert_eq!(buffer.in_memory().map(<[u8]>::len), Some(1000));
        let mut two = [0u8; 2];
        buffer.read_at(998, &mut two).unwrap();
        assert_eq!(two, [7, 7]);
    }

    use std::io::Read;
}

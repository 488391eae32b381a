//! The PDU link under one connection, from the first byte on. PDUs are read with a bound that
//! the caller picks per phase (the A-ASSOCIATE-RQ with `max_associate_pdu_bytes`, P-DATA with
//! `max_pdu`), checked on the 6-byte header before the body is buffered, and the body is buffered
//! as it arrives, not as declared. dicom-ul's server association reads its first PDU with the
//! P-DATA bound and cannot be told otherwise, which dropped real modalities' large
//! A-ASSOCIATE-RQs; so the SCP keeps the link itself and uses dicom-ul for the PDU codec only.

use std::time::Duration;

use dicom_ul::pdu::{MINIMUM_PDU_SIZE, Pdu};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::dimse::pdu_type_name;

/// Bytes buffered per read of the socket.
const READ_BUFFER: usize = 64 * 1024;
/// Most bytes of a body allocated ahead of their arrival.
const GROWTH: usize = 64 * 1024;
/// How long, and how many bytes, a close waits for the peer to stop sending.
const DRAIN_FOR: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 1024 * 1024;

/// The byte stream under a link: a TCP socket, or TLS over one.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A PDU header: type and length (the bytes after the 6-byte header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) pdu_type: u8,
    pub(super) length: u32,
}

impl Header {
    /// "P-DATA-TF (type 0x04, 1234 bytes)": what logs may say about a PDU.
    pub(super) fn summary(self) -> String {
        format!(
            "{} (type 0x{:02X}, {} bytes)",
            pdu_type_name(self.pdu_type),
            self.pdu_type,
            self.length
        )
    }
}

/// Why no PDU could be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// The peer closed the connection (before or inside a PDU).
    #[error("connection closed by the peer")]
    Closed,
    /// The header declares more than the bound of this phase.
    #[error("{} exceeds the maximum of {max} bytes", header.summary())]
    TooLarge { header: Header, max: u32 },
    /// The body does not parse as its type.
    #[error("unreadable {}: {message}", header.summary())]
    Malformed { header: Header, message: String },
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[source] std::io::Error),
}

fn io_error(e: std::io::Error) -> ReadError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => ReadError::Closed,
        _ => ReadError::Io(e),
    }
}

/// One connection's PDUs.
pub(super) struct Link {
    stream: BufReader<Box<dyn Stream>>,
    write_buffer: Vec<u8>,
}

impl Link {
    pub(super) fn new(socket: Box<dyn Stream>) -> Self {
        Self {
            stream: BufReader::with_capacity(READ_BUFFER, socket),
            write_buffer: Vec::new(),
        }
    }

    /// Reads the next PDU header.
    pub(super) async fn read_header(&mut self) -> Result<Header, ReadError> {
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header).await.map_err(io_error)?;
        Ok(Header {
            pdu_type: header[0],
            length: u32::from_be_bytes([header[2], header[3], header[4], header[5]]),
        })
    }

    /// Reads the body of a PDU whose header was read, if it is within `max` bytes, and parses
    /// it. At most `preallocate` bytes are allocated before they arrive.
    pub(super) async fn read_body(&mut self, header: Header, max: u32, preallocate: usize) -> Result<Pdu, ReadError> {
        if header.length > max {
            return Err(ReadError::TooLarge { header, max });
        }
        let length = header.length as usize;
        let mut bytes = Vec::with_capacity(6 + length.min(preallocate));
        bytes.extend_from_slice(&[header.pdu_type, 0]);
        bytes.extend_from_slice(&header.length.to_be_bytes());
        while bytes.len() < 6 + length {
            let start = bytes.len();
            let want = (6 + length - start).min(GROWTH.max(preallocate));
            bytes.resize(start + want, 0);
            self.stream.read_exact(&mut bytes[start..]).await.map_err(io_error)?;
        }
        // dicom-ul checks the bound again (strict); it needs one of at least its minimum.
        match dicom_ul::read_pdu(&bytes[..], max.max(MINIMUM_PDU_SIZE), true) {
            Ok(Some(pdu)) => Ok(pdu),
            Ok(None) => Err(ReadError::Malformed {
                header,
                message: "truncated".into(),
            }),
            Err(e) => Err(ReadError::Malformed {
                header,
                message: crate::error_chain(&e),
            }),
        }
    }

    /// Reads a whole PDU of at most `max` bytes (allocated once its header says how many).
    pub(super) async fn read_pdu(&mut self, max: u32) -> Result<Pdu, ReadError> {
        let header = self.read_header().await?;
        self.read_body(header, max, max as usize).await
    }

    /// Writes one PDU within `timeout`.
    pub(super) async fn send(&mut self, pdu: &Pdu, timeout: Duration) -> std::io::Result<()> {
        self.write_buffer.clear();
        dicom_ul::write_pdu(&mut self.write_buffer, pdu).map_err(std::io::Error::other)?;
        let socket = self.stream.get_mut();
        match tokio::time::timeout(timeout, socket.write_all(&self.write_buffer)).await {
            Ok(written) => written,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Sends our FIN (after a release).
    pub(super) async fn shutdown(&mut self) -> std::io::Result<()> {
        self.stream.get_mut().shutdown().await
    }

    /// Closes the connection so that the peer can read what was sent last: our FIN goes out
    /// first, then whatever the peer still sends is read and dropped (up to 1 MiB, for up to
    /// 1 s) until it closes its side. Closing with unread input would make the kernel answer
    /// with a reset, which can destroy an A-ABORT or A-ASSOCIATE-RJ before the peer reads it.
    pub(super) async fn close(&mut self) {
        let _ = self.stream.get_mut().shutdown().await;
        let drain = async {
            let mut scratch = vec![0u8; 16 * 1024];
            let mut drained = 0;
            while drained < DRAIN_BYTES {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
    }
}

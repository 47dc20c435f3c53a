//! JSON lines over rustls without a socket: ciphertext in
//! ([`Link::handle_ciphertext`]), frames out ([`Link::next_frame`]),
//! frames in ([`Link::queue_frame`]) and ciphertext out
//! ([`Link::poll_transmit`]), with the frame bound and a bounded send
//! queue. The agent's stand-in for the shared `link` crate (issue 11)
//! until it lands; the API is the one that crate describes.
//!
//! Key design decisions:
//! * Frames wait in an [`OutQueue`] of whole frames sent from an offset
//!   (never `drain` of one big buffer: sending stays linear).
//! * [`Link::poll_transmit`] moves at most [`WRITE_BUDGET`] bytes of
//!   plaintext into TLS per call, so one huge answer cannot monopolise a
//!   loop turn; the caller asks again once the socket took the bytes.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use basicagent_proto::{FrameDecoder, FrameError};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Plaintext handed to rustls per [`Link::poll_transmit`] call.
pub const WRITE_BUDGET: usize = 1 << 20;
/// rustls' own buffer of outgoing TLS records.
const TLS_BUFFER_LIMIT: usize = 256 << 10;
/// Frames handed to rustls in one vectored write.
const MAX_IOV: usize = 64;

/// Why a link failed; the connection is over.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// rustls refused the peer's bytes (a bad certificate, a bad record);
    /// the alert telling the peer why is queued for [`Link::poll_transmit`].
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls' reader or writer failed.
    #[error("TLS {0}: {1}")]
    Io(&'static str, io::Error),
}

/// Frames waiting for rustls, sent in order from an offset into the
/// first: taking `n` bytes never moves the rest.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the first frame already taken.
    offset: usize,
    /// Bytes not yet taken, in all frames.
    bytes: usize,
}

impl OutQueue {
    /// Appends one frame (an empty one is ignored).
    pub fn push(&mut self, frame: Vec<u8>) {
        if !frame.is_empty() {
            self.bytes = self.bytes.saturating_add(frame.len());
            self.frames.push_back(frame);
        }
    }

    /// Bytes not yet taken.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Up to `max` slices of what is left, in order.
    pub fn slices(&self, max: usize) -> Vec<io::IoSlice<'_>> {
        self.frames
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, f)| io::IoSlice::new(if i == 0 { &f[self.offset..] } else { f }))
            .collect()
    }

    /// Marks `n` bytes (at most [`OutQueue::len`]) as taken; finished
    /// frames are freed.
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.bytes);
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.frames.pop_front();
        }
        if self.frames.front().is_some_and(|f| f.len() == self.offset) {
            self.frames.pop_front();
            self.offset = 0;
        }
    }
}

/// One TLS client connection carrying `\n`-terminated frames.
pub struct Link {
    tls: ClientConnection,
    decoder: FrameDecoder,
    out: OutQueue,
    /// The handshake finished (reported once by [`Link::handle_ciphertext`]).
    up: bool,
    read_buf: Vec<u8>,
}

/// What [`Link::handle_ciphertext`] saw besides frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The handshake finished with these bytes.
    pub handshaken: bool,
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

impl Link {
    /// A client connection to `name` (the name the certificate must carry).
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        max_frame: usize,
    ) -> Result<Link, LinkError> {
        let mut tls = ClientConnection::new(config, name)?;
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Link {
            tls,
            decoder: FrameDecoder::new(max_frame),
            out: OutQueue::default(),
            up: false,
            read_buf: vec![0; 16 << 10],
        })
    }

    /// Bytes from the socket. Plaintext goes to the frame decoder; take
    /// the frames with [`Link::next_frame`].
    pub fn handle_ciphertext(&mut self, mut bytes: &[u8]) -> Result<Progress, LinkError> {
        let mut progress = Progress::default();
        while !bytes.is_empty() {
            let n = self
                .tls
                .read_tls(&mut bytes)
                .map_err(|e| LinkError::Io("read", e))?;
            let state = self.tls.process_new_packets()?;
            if !self.up && !self.tls.is_handshaking() {
                self.up = true;
                progress.handshaken = true;
            }
            let mut pending = state.plaintext_bytes_to_read();
            while pending > 0 {
                let got = match self.tls.reader().read(&mut self.read_buf) {
                    Ok(0) => break,
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(LinkError::Io("read", e)),
                };
                pending = pending.saturating_sub(got);
                self.decoder.push(&self.read_buf[..got]);
            }
            if state.peer_has_closed() {
                progress.peer_closed = true;
                return Ok(progress);
            }
            if n == 0 {
                break;
            }
        }
        Ok(progress)
    }

    /// The next whole frame read (without its `\n`), or the error of one
    /// that was too long (skipped).
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        self.decoder.next_frame()
    }

    /// Queues one frame (`\n` included) to send once the handshake is done.
    pub fn queue_frame(&mut self, frame: Vec<u8>) {
        self.out.push(frame);
    }

    /// Plaintext bytes queued and not yet taken by rustls.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Whether the handshake is done.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Whether [`Link::poll_transmit`] has bytes to give.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write() || (self.up && !self.out.is_empty())
    }

    /// Moves at most [`WRITE_BUDGET`] bytes of queued plaintext into TLS
    /// and appends the TLS records to `out`. Returns the bytes appended.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Result<usize, LinkError> {
        let start = out.len();
        let mut budget = WRITE_BUDGET;
        loop {
            let mut progressed = false;
            if self.up && !self.out.is_empty() && budget > 0 {
                let slices = self.out.slices(MAX_IOV);
                let n = self
                    .tls
                    .writer()
                    .write_vectored(&slices)
                    .map_err(|e| LinkError::Io("write", e))?;
                drop(slices);
                self.out.consume(n);
                budget = budget.saturating_sub(n);
                progressed = n > 0;
            }
            while self.tls.wants_write() {
                match self.tls.write_tls(out) {
                    Ok(0) => break,
                    Ok(_) => progressed = true,
                    Err(e) => return Err(LinkError::Io("write", e)),
                }
            }
            if !progressed || budget == 0 || self.out.is_empty() {
                break;
            }
        }
        Ok(out.len() - start)
    }

    /// Ends the connection: the frames still queued (at most one write
    /// budget: answers to cancelled calls at shutdown), close_notify if the
    /// handshake was done, and whatever TLS records are still due, to write
    /// once before closing.
    pub fn close(mut self) -> Vec<u8> {
        let mut last = Vec::new();
        if self.up {
            let _ = self.poll_transmit(&mut last);
            self.tls.send_close_notify();
        }
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut last) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        last
    }

    /// The server's certificate chain (after the handshake).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_out_queue_sends_frames_in_order_from_an_offset() {
        let mut q = OutQueue::default();
        q.push(b"abc".to_vec());
        q.push(Vec::new());
        q.push(b"defg".to_vec());
        assert_eq!(q.len(), 7);
        let joined = |q: &OutQueue| -> Vec<u8> {
            q.slices(MAX_IOV)
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect()
        };
        assert_eq!(joined(&q), b"abcdefg");
        q.consume(2);
        assert_eq!(joined(&q), b"cdefg");
        q.consume(1);
        assert_eq!(q.frames.len(), 1, "a finished frame is freed");
        q.consume(3);
        assert_eq!(joined(&q), b"g");
        q.consume(10);
        assert!(q.is_empty());
        assert!(q.frames.is_empty());
        assert_eq!(q.slices(4).len(), 0);
    }
}

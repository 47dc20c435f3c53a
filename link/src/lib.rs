//! BasicAgent's link layer: JSON lines over rustls, no sockets.
//!
//! A [`Link`] is one end of a control connection as a state machine fed
//! bytes: the caller hands it ciphertext read from wherever
//! ([`Link::handle_ciphertext`]), pulls complete frames
//! ([`Link::next_frame`]), queues frames to send ([`Link::queue_frame`])
//! and lets it write ciphertext into any [`std::io::Write`]
//! ([`Link::poll_transmit`]). It owns the rustls connection, the frame
//! decoder ([`basicagent_proto::FrameDecoder`]) and the send queue; it
//! opens no socket, reads no clock and starts no thread. It is generic
//! over both ends: `Link<rustls::ClientConnection>` (the agent, the
//! tests) and `Link<rustls::ServerConnection>` (the server, the load
//! tester) are the same code.
//!
//! Key decisions (bounded memory, a loop that always turns):
//! * Frames to send wait in an [`OutQueue`] of whole frames sent from an
//!   offset (never `drain` of one big buffer: sending stays linear).
//! * [`Link::congested`] says the queue holds [`answer_bound`] bytes or
//!   more (one largest frame always fits, never less than 8 MiB): callers
//!   admit no new work then. [`Link::wants_read`] turns false past
//!   [`read_stop`] (the bound plus one largest frame plus
//!   [`READ_STOP_SLACK`]), so a peer that does not read cannot make us
//!   queue without end; [`Link::queue_frame`] refuses a frame
//!   ([`Congested`]) only past that plus another [`READ_STOP_SLACK`], a
//!   hard cap callers following `wants_read` never reach.
//! * One [`Link::handle_ciphertext`] call takes at most [`READ_BUDGET`]
//!   bytes and stops as soon as a frame is complete, so the frames a call
//!   decodes are at most one TLS record's worth: the caller serves them
//!   (and queues their answers) before more is read. It returns what it
//!   took; the caller keeps the rest for the next call.
//! * One [`Link::poll_transmit`] call moves at most [`WRITE_BUDGET`]
//!   bytes of plaintext into rustls; [`Transmit::more`] says there is
//!   more to send right away, so one huge frame cannot monopolise a loop.
//! * A line longer than the frame limit is one
//!   [`FrameError::TooLong`] from [`Link::next_frame`], then skipped up to
//!   its `\n` without being buffered; the frames after it are served.
//! * After an error from [`Link::handle_ciphertext`] the link is failed:
//!   it reads no more and moves no more plaintext, but
//!   [`Link::poll_transmit`] still writes what rustls queued (the alert
//!   telling the peer why).

#![forbid(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod queue;

use std::io::{self, BufRead, Write};
use std::ops::{Deref, DerefMut};

use basicagent_proto::FrameDecoder;
pub use basicagent_proto::FrameError;
use rustls::{ConnectionCommon, SideData};

pub use queue::OutQueue;

/// The smallest bound on queued bytes; the bound is this or `max_frame`,
/// whichever is larger (see [`answer_bound`]).
pub const ANSWER_BOUND_MIN: usize = 8 << 20;
/// Bytes past the bound plus one largest frame at which the link stops
/// reading (see [`read_stop`]): what answers to frames read meanwhile
/// (small refusals) may take.
pub const READ_STOP_SLACK: usize = 1 << 20;
/// Plaintext handed to rustls per [`Link::poll_transmit`] call.
pub const WRITE_BUDGET: usize = 1 << 20;
/// Ciphertext taken per [`Link::handle_ciphertext`] call (and what the
/// agent reads from its socket per turn).
pub const READ_BUDGET: usize = 4 << 20;
/// Frames handed to rustls in one vectored write.
pub const MAX_IOV: usize = 64;

/// The bound on queued bytes for a frame limit: one largest frame always
/// fits, and never less than 8 MiB. At or past it the link is
/// [`Link::congested`].
pub fn answer_bound(max_frame: usize) -> usize {
    max_frame.max(ANSWER_BOUND_MIN)
}

/// Queued bytes past which the link does not read: the bound, plus one
/// largest frame (an answer admitted under the bound), plus
/// [`READ_STOP_SLACK`].
pub fn read_stop(max_frame: usize) -> usize {
    answer_bound(max_frame)
        .saturating_add(max_frame)
        .saturating_add(READ_STOP_SLACK)
}

/// The hard cap on queued bytes: [`read_stop`] plus another
/// [`READ_STOP_SLACK`]; [`Link::queue_frame`] refuses what would cross it.
pub fn queue_limit(max_frame: usize) -> usize {
    read_stop(max_frame).saturating_add(READ_STOP_SLACK)
}

/// Why the link cannot go on. After any of these the link is failed
/// ([`Link::is_failed`]); only [`Link::poll_transmit`] still works, to
/// send what rustls queued (an alert).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer's bytes are not valid TLS, or the handshake failed
    /// (certificate, protocol version, ...).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls refused the ciphertext (for example a record larger than
    /// TLS allows).
    #[error("TLS read: {0}")]
    Ciphertext(#[source] io::Error),
    /// rustls could not hand over the plaintext it decrypted.
    #[error("TLS read: {0}")]
    Plaintext(#[source] io::Error),
    /// rustls refused plaintext to send.
    #[error("TLS write: {0}")]
    PlaintextWrite(#[source] io::Error),
    /// The sink given to [`Link::poll_transmit`] failed (other than
    /// `WouldBlock`, which is not an error).
    #[error("write: {0}")]
    Write(#[source] io::Error),
    /// The link failed earlier (see the first error); nothing more is read.
    #[error("the link failed earlier")]
    Failed,
}

/// A frame was not queued: it would take the queue past its hard cap
/// ([`queue_limit`]). The frame is handed back.
#[derive(thiserror::Error)]
#[error("send queue full: {queued} bytes queued, a frame of {} bytes would cross the cap of {limit}", frame.len())]
pub struct Congested {
    /// The frame, not queued.
    pub frame: Vec<u8>,
    /// Bytes queued when it was refused.
    pub queued: usize,
    /// The cap.
    pub limit: usize,
}

impl std::fmt::Debug for Congested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Congested")
            .field("frame_len", &self.frame.len())
            .field("queued", &self.queued)
            .field("limit", &self.limit)
            .finish()
    }
}

/// What one [`Link::poll_transmit`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transmit {
    /// Plaintext bytes moved from the queue into rustls.
    pub plaintext: usize,
    /// Ciphertext bytes written into the sink.
    pub ciphertext: usize,
    /// The sink said `WouldBlock`: call again when it is writable.
    pub blocked: bool,
    /// The write budget ran out with more to send and the sink taking
    /// it: call again soon (do not sleep).
    pub more: bool,
}

/// One end of a control connection: frames in, frames out, TLS inside.
/// See the crate documentation for the contract.
pub struct Link<C> {
    conn: C,
    decoder: FrameDecoder,
    /// The next frame to hand out. Invariant: when `None`, the decoder
    /// holds no complete frame either.
    peeked: Option<Result<Vec<u8>, FrameError>>,
    out: OutQueue,
    bound: usize,
    read_stop: usize,
    limit: usize,
    failed: bool,
    peer_closed: bool,
    /// The byte stream ended ([`Link::handle_eof`]).
    eof: bool,
    closing: bool,
}

impl<C> std::fmt::Debug for Link<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("queued", &self.out.len())
            .field("bound", &self.bound)
            .field("failed", &self.failed)
            .field("peer_closed", &self.peer_closed)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl<C, S> Link<C>
where
    C: Deref<Target = ConnectionCommon<S>> + DerefMut,
    S: SideData,
{
    /// A link over `conn` (fresh, before its handshake) accepting frames
    /// of at most `max_frame` bytes (clamped as
    /// [`FrameDecoder::new`] does). The connection's own buffer limit is
    /// left as the caller set it.
    pub fn new(conn: C, max_frame: usize) -> Self {
        let decoder = FrameDecoder::new(max_frame);
        let max_frame = decoder.max_frame();
        Link {
            conn,
            decoder,
            peeked: None,
            out: OutQueue::default(),
            bound: answer_bound(max_frame),
            read_stop: read_stop(max_frame),
            limit: queue_limit(max_frame),
            failed: false,
            peer_closed: false,
            eof: false,
            closing: false,
        }
    }

    /// Feeds ciphertext read from the peer. Returns how many bytes of
    /// `bytes` were taken: all of them, or fewer when a frame became
    /// complete (pull frames with [`Link::next_frame`], then call again
    /// with the rest), when [`READ_BUDGET`] bytes were taken, or when the
    /// link does not read ([`Link::wants_read`] is false: 0 is returned
    /// and the caller keeps the bytes until it does).
    ///
    /// An error fails the link; rustls may have queued an alert for the
    /// peer ([`Link::poll_transmit`] sends it).
    pub fn handle_ciphertext(&mut self, bytes: &[u8]) -> Result<usize, LinkError> {
        if self.failed {
            return Err(LinkError::Failed);
        }
        let mut rest = bytes;
        let mut taken = 0usize;
        while !rest.is_empty() && taken < READ_BUDGET && self.wants_read() {
            let before = rest.len();
            let budget = READ_BUDGET - taken;
            let mut window = &rest[..rest.len().min(budget)];
            let n = match self.conn.read_tls(&mut window) {
                Ok(n) => n,
                Err(e) => {
                    self.failed = true;
                    return Err(LinkError::Ciphertext(e));
                }
            };
            if n == 0 {
                // rustls takes nothing more (close_notify seen).
                break;
            }
            rest = &rest[n.min(before)..];
            taken = taken.saturating_add(n);
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    self.failed = true;
                    return Err(LinkError::Tls(e));
                }
            };
            self.drain_plaintext()?;
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
        }
        Ok(taken)
    }

    /// The peer's end of the byte stream (a read returned 0). `Ok` when
    /// it sent its `close_notify` first (a clean close); otherwise a
    /// [`LinkError::Plaintext`] of kind `UnexpectedEof` (rustls' words:
    /// the peer closed without `close_notify`, so what came may be cut).
    /// Either way nothing more is read.
    pub fn handle_eof(&mut self) -> Result<(), LinkError> {
        if self.failed {
            return Err(LinkError::Failed);
        }
        self.eof = true;
        if self.peer_closed {
            return Ok(());
        }
        let mut empty: &[u8] = &[];
        // Tells rustls the stream ended: it reports what that means.
        let _ = self.conn.read_tls(&mut empty);
        let mut reader = self.conn.reader();
        match reader.fill_buf() {
            Ok(_) => Ok(()),
            Err(e) => Err(LinkError::Plaintext(e)),
        }
    }

    /// Moves all decrypted plaintext into the decoder.
    fn drain_plaintext(&mut self) -> Result<(), LinkError> {
        loop {
            let mut reader = self.conn.reader();
            let chunk = match reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.failed = true;
                    return Err(LinkError::Plaintext(e));
                }
            };
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            self.decoder.push(chunk);
            reader.consume(n);
        }
        if self.peeked.is_none() {
            self.peeked = self.decoder.next_frame();
        }
        Ok(())
    }

    /// The next complete frame (without its `\n`), in stream order, or a
    /// [`FrameError::TooLong`] for a line past the limit (that line is
    /// skipped; the frames after it follow).
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        let frame = self.peeked.take();
        self.peeked = self.decoder.next_frame();
        frame
    }

    /// A decoded frame waits for [`Link::next_frame`].
    pub fn has_frame(&self) -> bool {
        self.peeked.is_some()
    }

    /// Queues one frame (its `\n` included) to send. Refused, and handed
    /// back, only if it would take the queue past [`queue_limit`]; an
    /// empty frame is ignored. Frames queued during the handshake wait
    /// for it.
    pub fn queue_frame(&mut self, frame: Vec<u8>) -> Result<(), Congested> {
        let queued = self.out.len();
        if queued.saturating_add(frame.len()) > self.limit {
            return Err(Congested {
                frame,
                queued,
                limit: self.limit,
            });
        }
        self.out.push(frame);
        Ok(())
    }

    /// Bytes queued and not yet taken by rustls.
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    /// Frames (whole or partly sent) still queued.
    pub fn queued_frames(&self) -> usize {
        self.out.frames()
    }

    /// The queue holds [`Link::bound`] bytes or more: admit no new work.
    pub fn congested(&self) -> bool {
        self.out.len() >= self.bound
    }

    /// The congestion bound ([`answer_bound`] of the frame limit).
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// The frame limit.
    pub fn max_frame(&self) -> usize {
        self.decoder.max_frame()
    }

    /// Bytes of an incomplete line held (what a peer closing now would
    /// lose).
    pub fn buffered_len(&self) -> usize {
        self.decoder.buffered_len()
    }

    /// Moves queued plaintext into rustls (at most [`WRITE_BUDGET`]
    /// bytes, none during the handshake or after a failure or
    /// [`Link::send_close_notify`]) and writes the TLS records into
    /// `sink` until done, `WouldBlock` (reported as
    /// [`Transmit::blocked`]) or the budget is spent ([`Transmit::more`]).
    /// `Interrupted` is retried.
    pub fn poll_transmit(&mut self, sink: &mut dyn Write) -> Result<Transmit, LinkError> {
        let mut t = Transmit::default();
        let mut budget = WRITE_BUDGET;
        loop {
            let mut progressed = false;
            if self.moves_plaintext() && budget > 0 {
                let mut iov = [io::IoSlice::new(&[]); MAX_IOV];
                let filled = self.out.fill_slices(&mut iov);
                let written = self
                    .conn
                    .writer()
                    .write_vectored(iov.get(..filled).unwrap_or(&[]));
                match written {
                    Ok(n) if n > 0 => {
                        self.out.consume(n);
                        budget = budget.saturating_sub(n);
                        t.plaintext = t.plaintext.saturating_add(n);
                        progressed = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.failed = true;
                        return Err(LinkError::PlaintextWrite(e));
                    }
                }
            }
            while self.conn.wants_write() {
                match self.conn.write_tls(sink) {
                    Ok(0) => break,
                    Ok(n) => {
                        t.ciphertext = t.ciphertext.saturating_add(n);
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        t.blocked = true;
                        break;
                    }
                    Err(e) => {
                        self.failed = true;
                        return Err(LinkError::Write(e));
                    }
                }
            }
            if t.blocked || !progressed || !self.moves_plaintext() {
                break;
            }
            if budget == 0 {
                t.more = true;
                break;
            }
        }
        Ok(t)
    }

    /// Plaintext can go from the queue into rustls now.
    fn moves_plaintext(&self) -> bool {
        !self.failed && !self.closing && !self.conn.is_handshaking() && !self.out.is_empty()
    }

    /// The link takes ciphertext: not failed, the peer has not closed (nor
    /// its stream ended), no decoded frame waits, and the queue is not
    /// past [`read_stop`].
    pub fn wants_read(&self) -> bool {
        !self.failed
            && !self.peer_closed
            && !self.eof
            && self.peeked.is_none()
            && self.out.len() <= self.read_stop
    }

    /// [`Link::poll_transmit`] has something to do: TLS records to write
    /// or queued plaintext it may move.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write() || self.moves_plaintext()
    }

    /// The TLS handshake is not finished.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// A [`Link::handle_ciphertext`] or [`Link::poll_transmit`] error
    /// happened; the link only flushes what rustls holds.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The peer sent its TLS `close_notify`: nothing more will come.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Queues our `close_notify` (sent by the next
    /// [`Link::poll_transmit`]); queued frames not yet in rustls are not
    /// sent after it.
    pub fn send_close_notify(&mut self) {
        if !self.closing {
            self.closing = true;
            self.conn.send_close_notify();
        }
    }

    /// The rustls connection (peer certificates, ALPN, server name).
    pub fn conn(&self) -> &C {
        &self.conn
    }

    /// The rustls connection, mutably (for example to set its buffer
    /// limit). Reading or writing through it bypasses the link.
    pub fn conn_mut(&mut self) -> &mut C {
        &mut self.conn
    }

    /// The rustls connection back.
    pub fn into_inner(self) -> C {
        self.conn
    }
}

#[cfg(test)]
mod tests;

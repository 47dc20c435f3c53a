//! Framing (protocol §3): split a byte stream into `\n`-terminated lines with bounded memory.
//!
//! Call order: [`FrameDecoder::push`] the bytes read from the peer, then
//! call [`FrameDecoder::next_frame`] until it returns `None`. Memory is
//! bounded by the frame limit plus what one `push` carried: a line longer
//! than the limit is never buffered, it yields one [`FrameError::TooLong`]
//! as soon as it crosses the limit and its remaining bytes are dropped up to
//! and including its `\n`.

use std::collections::VecDeque;

/// Default maximum frame size: 16 MiB (protocol §3).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why the stream did not give a usable frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line grew past the limit; it is skipped up to its `\n`.
    #[error("frame too long (more than {limit} bytes)")]
    TooLong { limit: usize },
}

/// An outgoing frame would be longer than the limit; nothing usable was
/// written (the writer stopped at the limit, so memory stays bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame longer than {limit} bytes")]
pub struct FrameTooLong {
    /// The limit, in bytes before the `\n`.
    pub limit: usize,
}

/// A `Write` into a `Vec` that refuses to grow past `left` more bytes.
struct Limited<'a> {
    out: &'a mut Vec<u8>,
    left: usize,
}

impl std::io::Write for Limited<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            return Err(std::io::Error::other("frame limit"));
        }
        self.left -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serialises `value` as one frame (`\n` appended) onto `out`, the JSON at
/// most `limit` bytes: the same rule the decoder applies. On
/// [`FrameTooLong`] `out` is left as it was.
pub(crate) fn write_limited<T: serde::Serialize>(
    value: &T,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), FrameTooLong> {
    let start = out.len();
    let mut w = Limited {
        out: &mut *out,
        left: limit,
    };
    if serde_json::to_writer(&mut w, value).is_err() {
        out.truncate(start);
        return Err(FrameTooLong { limit });
    }
    out.push(b'\n');
    Ok(())
}

/// Splits bytes into frames: one line each, without its `\n` (and without
/// a `\r` just before it). Lines that are empty or hold only spaces, tabs
/// and `\r` are ignored. The limit counts the bytes of the line before
/// its `\n`, a trailing `\r` not included.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    /// The current incomplete line (never more than `max + 1` bytes).
    partial: Vec<u8>,
    /// True while dropping the rest of a too-long line.
    skipping: bool,
    /// Complete frames and errors, in stream order, not yet pulled.
    ready: VecDeque<Result<Vec<u8>, FrameError>>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that accepts lines of at most `max` bytes (clamped to
    /// `1..=usize::MAX - 1`).
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max: max.clamp(1, usize::MAX - 1),
            partial: Vec::new(),
            skipping: false,
            ready: VecDeque::new(),
        }
    }

    /// The configured limit.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Feeds bytes as read from the peer, in any chunking.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, complete) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.skipping {
                if complete {
                    self.skipping = false;
                }
                continue;
            }
            // A line may carry max bytes plus one trailing '\r'.
            let room = self.max + 1 - self.partial.len();
            if chunk.len() > room {
                self.too_long(complete);
                continue;
            }
            self.partial.extend_from_slice(chunk);
            if complete {
                self.finish_line();
            } else if self.partial.len() > self.max && self.partial.last() != Some(&b'\r') {
                self.too_long(false);
            }
        }
    }

    /// The next complete frame or error, in stream order.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        self.ready.pop_front()
    }

    /// Bytes of an incomplete line held (what a peer closing now would lose).
    pub fn buffered_len(&self) -> usize {
        self.partial.len()
    }

    fn too_long(&mut self, line_complete: bool) {
        // Give the memory back: a connection that once received an
        // oversized line must not keep `max` bytes for good.
        self.partial = Vec::new();
        self.skipping = !line_complete;
        self.ready
            .push_back(Err(FrameError::TooLong { limit: self.max }));
    }

    fn finish_line(&mut self) {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > self.max {
            self.ready
                .push_back(Err(FrameError::TooLong { limit: self.max }));
        } else if !line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            self.ready.push_back(Ok(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_line_gives_its_memory_back() {
        let mut d = FrameDecoder::new(1 << 20);
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..20 {
            d.push(&chunk);
        }
        assert!(matches!(
            d.next_frame(),
            Some(Err(FrameError::TooLong { .. }))
        ));
        assert_eq!(
            d.partial.capacity(),
            0,
            "the partial line's buffer is freed"
        );
        d.push(b"\n{\"a\":1}\n");
        assert_eq!(d.next_frame(), Some(Ok(b"{\"a\":1}".to_vec())));
    }

    fn drain(d: &mut FrameDecoder) -> Vec<Result<Vec<u8>, FrameError>> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn split_at_every_byte() {
        let stream = b"{\"id\":1,\"method\":\"ping\"}\r\n\n{\"a\":\"b\"}\n  \n{\"c\":3}\n";
        let want: Vec<Result<Vec<u8>, FrameError>> = vec![
            Ok(b"{\"id\":1,\"method\":\"ping\"}".to_vec()),
            Ok(b"{\"a\":\"b\"}".to_vec()),
            Ok(b"{\"c\":3}".to_vec()),
        ];
        for cut in 0..=stream.len() {
            let mut d = FrameDecoder::new(64);
            d.push(&stream[..cut]);
            let mut got = drain(&mut d);
            d.push(&stream[cut..]);
            got.extend(drain(&mut d));
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(d.buffered_len(), 0);
        }
        // One byte at a time.
        let mut d = FrameDecoder::new(64);
        let mut got = Vec::new();
        for b in stream.iter() {
            d.push(std::slice::from_ref(b));
            got.extend(drain(&mut d));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn extreme_limits() {
        let mut d = FrameDecoder::new(usize::MAX);
        d.push(b"ab\n");
        assert_eq!(d.next_frame(), Some(Ok(b"ab".to_vec())));
        let mut d = FrameDecoder::new(0);
        d.push(b"a\nab\n");
        assert_eq!(
            drain(&mut d),
            vec![Ok(b"a".to_vec()), Err(FrameError::TooLong { limit: 1 })]
        );
    }

    #[test]
    fn many_frames_in_one_push() {
        let mut stream = Vec::new();
        for i in 0..1000 {
            stream.extend_from_slice(format!("{{\"id\":{i}}}\n").as_bytes());
        }
        let mut d = FrameDecoder::default();
        d.push(&stream);
        let got = drain(&mut d);
        assert_eq!(got.len(), 1000);
        assert_eq!(got[999], Ok(b"{\"id\":999}".to_vec()));
    }

    #[test]
    fn too_long_then_normal_frame() {
        let mut d = FrameDecoder::new(8);
        d.push(b"12345678\n");
        d.push(b"123456789");
        assert_eq!(d.next_frame(), Some(Ok(b"12345678".to_vec())));
        // The error comes as soon as the line crosses the limit ...
        assert_eq!(d.next_frame(), Some(Err(FrameError::TooLong { limit: 8 })));
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.buffered_len(), 0);
        // ... and the rest of the line is dropped without buffering.
        for _ in 0..10_000 {
            d.push(b"xxxxxxxxxxxxxxxx");
            assert_eq!(d.buffered_len(), 0);
        }
        assert_eq!(d.next_frame(), None);
        d.push(b"xx\n{\"ok\":1}\n");
        assert_eq!(d.next_frame(), Some(Ok(b"{\"ok\":1}".to_vec())));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn too_long_in_a_single_push_yields_one_error() {
        let mut d = FrameDecoder::new(4);
        d.push(b"ab\n0123456789\ncd\n");
        assert_eq!(
            drain(&mut d),
            vec![
                Ok(b"ab".to_vec()),
                Err(FrameError::TooLong { limit: 4 }),
                Ok(b"cd".to_vec())
            ]
        );
    }

    #[test]
    fn limit_counts_without_crlf() {
        let mut d = FrameDecoder::new(4);
        d.push(b"abcd\r");
        assert_eq!(d.next_frame(), None);
        d.push(b"\nabcd\rx\n");
        assert_eq!(
            drain(&mut d),
            vec![Ok(b"abcd".to_vec()), Err(FrameError::TooLong { limit: 4 })]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut d = FrameDecoder::new(3);
        let mut seed = 12345u32;
        for _ in 0..2000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = (seed >> 24) as usize % 9;
            let bytes: Vec<u8> = (0..len)
                .map(|i| [b'\n', b'\r', b'a', b' '][(seed as usize >> i) % 4])
                .collect();
            d.push(&bytes);
            for f in drain(&mut d).into_iter().flatten() {
                assert!(f.len() <= 3 && !f.contains(&b'\n'));
            }
            assert!(d.buffered_len() <= 4);
        }
    }
}

//! Bounded capture of one output stream: keeps the first `cap` bytes,
//! counts the rest, and turns the bytes into JSON-safe text.

use std::borrow::Cow;
use std::collections::VecDeque;

/// Which bytes of a stream longer than its cap are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Truncate {
    /// The first `cap` bytes.
    #[default]
    Head,
    /// The last `cap` bytes.
    Tail,
    /// The first `cap / 2` and the last `cap - cap / 2` bytes.
    HeadTail,
}

/// One stream's captured bytes. Memory never exceeds `cap` bytes, however
/// much the command prints.
pub struct Capture {
    /// The head part (the first bytes).
    kept: Vec<u8>,
    /// Bytes the head part keeps.
    cap: usize,
    /// The last bytes (`Tail`, `HeadTail`), at most `tail_cap`.
    tail: VecDeque<u8>,
    tail_cap: usize,
    total: u64,
    /// SHA-256 of every byte the stream carried, kept or not.
    digest: ring::digest::Context,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("kept", &self.kept.len())
            .field("cap", &self.cap)
            .field("total", &self.total)
            .finish()
    }
}

/// A finished capture, ready for the answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Captured {
    /// The kept bytes as text (see [`Capture::finish`] for the rule).
    pub text: String,
    /// Every byte the stream carried, kept or not.
    pub total: u64,
    /// More than `cap` bytes arrived.
    pub truncated: bool,
    /// Some kept bytes were not UTF-8 and became U+FFFD.
    pub lossy: bool,
    /// SHA-256 (lower-case hex) of the full stream.
    pub sha256: String,
    /// The text ends at the stream's end (`Tail`): a further cut (the
    /// frame bound) keeps its end.
    pub keep_end: bool,
}

impl Capture {
    /// An empty capture keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Capture::with_mode(cap, Truncate::Head)
    }

    /// An empty capture keeping at most `cap` bytes, chosen by `mode`.
    pub fn with_mode(cap: usize, mode: Truncate) -> Self {
        let (head, tail_cap) = match mode {
            Truncate::Head => (cap, 0),
            Truncate::Tail => (0, cap),
            Truncate::HeadTail => (cap / 2, cap - cap / 2),
        };
        Capture {
            kept: Vec::new(),
            cap: head,
            tail: VecDeque::new(),
            tail_cap,
            total: 0,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// Appends what was read; bytes past the cap are only counted.
    pub fn push(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len() as u64);
        self.digest.update(bytes);
        let room = self.cap - self.kept.len();
        let take = room.min(bytes.len());
        self.push_tail(&bytes[take..]);
        if take == 0 {
            return;
        }
        let needed = self.kept.len() + take;
        if needed > self.kept.capacity() {
            // Grow by doubling, but never past the cap.
            let target = (self.kept.capacity() * 2)
                .max(needed)
                .max(4096)
                .min(self.cap);
            self.kept.reserve_exact(target - self.kept.len());
        }
        self.kept.extend_from_slice(&bytes[..take]);
    }

    /// Past the head part: the ring of the last bytes.
    fn push_tail(&mut self, bytes: &[u8]) {
        if self.tail_cap == 0 || bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_cap..]);
            return;
        }
        let over = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..over);
        self.tail.extend(bytes);
    }

    /// Bytes kept in all.
    fn kept_len(&self) -> usize {
        self.kept.len() + self.tail.len()
    }

    /// The tail part's bytes, without a UTF-8 sequence whose start was
    /// dropped (when bytes were dropped before it).
    fn tail_bytes(&self) -> Vec<u8> {
        let (a, b) = self.tail.as_slices();
        let mut v = Vec::with_capacity(self.tail.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        let dropped = self.total > self.kept_len() as u64;
        if dropped {
            let lead = v.iter().take(3).take_while(|&&b| b & 0xC0 == 0x80).count();
            v.drain(..lead);
        }
        v
    }

    /// The text rule: the kept bytes decoded as UTF-8; an invalid sequence
    /// becomes U+FFFD and sets `lossy`. When the stream was truncated, an
    /// incomplete UTF-8 sequence cut by the cap is dropped (not replaced),
    /// so truncation alone never makes the text lossy.
    pub fn finish(self) -> Captured {
        let truncated = self.total > self.kept_len() as u64;
        let keep_end = self.cap == 0 && self.tail_cap > 0;
        let tail = self.tail_bytes();
        let sha256 = self
            .digest
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut kept = self.kept;
        if truncated {
            let cut = incomplete_tail(&kept);
            kept.truncate(kept.len() - cut);
        }
        kept.extend_from_slice(&tail);
        let (text, lossy) = match String::from_utf8(kept) {
            Ok(text) => (text, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        };
        Captured {
            text,
            total: self.total,
            truncated,
            lossy,
            sha256,
            keep_end,
        }
    }
}

/// The output so far of a stream still being read (see
/// [`Capture::peek`]); borrows the capture, so a peek copies the text
/// once at most, into the answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Peeked<'a> {
    pub text: Cow<'a, str>,
    pub total: u64,
    pub truncated: bool,
    pub lossy: bool,
}

impl Capture {
    /// The text so far, without consuming or changing the capture: the
    /// rule of [`Capture::finish`], except that an incomplete UTF-8
    /// sequence at the end is always left out (its remaining bytes may
    /// not have been read yet; it shows in a later peek or the answer).
    pub fn peek(&self) -> Peeked<'_> {
        let cut = incomplete_tail(&self.kept);
        let bytes = &self.kept[..self.kept.len() - cut];
        let truncated = self.total > self.kept_len() as u64;
        if self.tail.is_empty() {
            let text = String::from_utf8_lossy(bytes);
            return Peeked {
                lossy: matches!(text, Cow::Owned(_)),
                text,
                total: self.total,
                truncated,
            };
        }
        let mut all = bytes.to_vec();
        let tail = self.tail_bytes();
        let cut = incomplete_tail(&tail);
        all.extend_from_slice(&tail[..tail.len() - cut]);
        let (text, lossy) = match String::from_utf8(all) {
            Ok(t) => (t, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        };
        Peeked {
            lossy,
            text: Cow::Owned(text),
            total: self.total,
            truncated,
        }
    }
}

/// The interleaved view (`transcript: true`): chunks in the order they
/// were read, tagged with their stream, at most `cap` bytes in all (the
/// first ones). Order across the two pipes is the order of the reads: a
/// command's writes to stdout and stderr between two reads may be
/// reordered.
#[derive(Debug, Default)]
pub struct Transcript {
    /// (is stderr, bytes); consecutive reads of one stream are merged.
    chunks: Vec<(bool, Vec<u8>)>,
    kept: usize,
    cap: usize,
    /// Bytes of a character cut by a read, per stream, held for the next.
    held: [Vec<u8>; 2],
    pub truncated: bool,
}

impl Transcript {
    pub fn new(cap: usize) -> Self {
        Transcript {
            cap,
            ..Transcript::default()
        }
    }

    pub fn push(&mut self, stderr: bool, bytes: &[u8]) {
        let held = &mut self.held[usize::from(stderr)];
        let mut data = std::mem::take(held);
        data.extend_from_slice(bytes);
        let cut = incomplete_tail(&data);
        *held = data.split_off(data.len() - cut);
        let room = self.cap - self.kept;
        if data.len() > room {
            data.truncate(room);
            let cut = incomplete_tail(&data);
            data.truncate(data.len() - cut);
            self.truncated = true;
        }
        if data.is_empty() {
            return;
        }
        self.kept += data.len();
        match self.chunks.last_mut() {
            Some((s, d)) if *s == stderr => d.extend_from_slice(&data),
            _ => self.chunks.push((stderr, data)),
        }
    }

    /// The chunks as text (invalid UTF-8 becomes U+FFFD).
    pub fn finish(self) -> Vec<(bool, String)> {
        self.chunks
            .into_iter()
            .map(|(s, d)| (s, String::from_utf8_lossy(&d).into_owned()))
            .collect()
    }
}

/// Length of an incomplete (but so far valid) UTF-8 sequence at the end.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let len = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if len > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_head_tail_keep_the_right_bytes() {
        let mut t = Capture::with_mode(4, Truncate::Tail);
        for chunk in [&b"abc"[..], b"defgh", b"ij"] {
            t.push(chunk);
        }
        assert_eq!(t.peek().text, "ghij");
        let done = t.finish();
        assert_eq!(
            (done.text.as_str(), done.total, done.truncated),
            ("ghij", 10, true)
        );
        assert!(done.keep_end);
        let mut h = Capture::with_mode(5, Truncate::HeadTail);
        h.push(b"0123456789");
        h.push(b"xy");
        let done = h.finish();
        assert_eq!((done.text.as_str(), done.truncated), ("019xy", true));
        assert!(!done.keep_end);
        // Short streams are whole in every mode.
        for mode in [Truncate::Head, Truncate::Tail, Truncate::HeadTail] {
            let mut c = Capture::with_mode(8, mode);
            c.push(b"abc");
            c.push(b"de");
            let d = c.finish();
            assert_eq!((d.text.as_str(), d.truncated), ("abcde", false), "{mode:?}");
        }
        // A character cut at the start of the tail is dropped, not lossy.
        let mut t = Capture::with_mode(3, Truncate::Tail);
        t.push("xé€".as_bytes()); // x, 2 bytes, 3 bytes
        let d = t.finish();
        assert_eq!((d.text.as_str(), d.lossy), ("€", false));
        let mut t = Capture::with_mode(4, Truncate::Tail);
        t.push("é€".as_bytes());
        let d = t.finish();
        assert_eq!((d.text.as_str(), d.lossy), ("€", false));
    }

    #[test]
    fn transcript_orders_merges_caps_and_keeps_characters() {
        let mut t = Transcript::new(10);
        t.push(false, b"ab");
        t.push(false, b"c");
        t.push(true, "\u{e9}".as_bytes().split_at(1).0);
        t.push(false, b"d");
        t.push(true, "\u{e9}".as_bytes().split_at(1).1);
        t.push(true, b"0123456789");
        assert!(t.truncated);
        assert_eq!(
            t.finish(),
            vec![(false, "abcd".to_owned()), (true, "\u{e9}0123".to_owned())]
        );
    }

    #[test]
    fn sha256_covers_the_whole_stream() {
        let mut c = Capture::new(2);
        c.push(b"ab");
        c.push(b"c");
        // sha256("abc")
        assert_eq!(
            c.finish().sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Capture::new(0).finish().sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn keeps_first_bytes_and_counts_all() {
        let mut c = Capture::new(5);
        c.push(b"abc");
        c.push(b"defgh");
        c.push(b"ij");
        assert_eq!(c.total, 10);
        let done = c.finish();
        assert_eq!(
            (done.text.as_str(), done.total, done.truncated, done.lossy),
            ("abcde", 10, true, false)
        );
    }

    #[test]
    fn memory_stays_at_cap() {
        let mut c = Capture::new(10_000);
        let chunk = [b'a'; 4096];
        for _ in 0..1000 {
            c.push(&chunk);
        }
        assert!(c.kept.capacity() <= 10_000);
        assert_eq!(c.total, 4_096_000);
    }

    #[test]
    fn zero_cap_counts_only() {
        let mut c = Capture::new(0);
        c.push(b"xyz");
        let done = c.finish();
        assert_eq!(
            (done.text.as_str(), done.total, done.truncated),
            ("", 3, true)
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let mut c = Capture::new(100);
        c.push(b"ok\xff\xfe!");
        let done = c.finish();
        assert_eq!(done.text, "ok\u{FFFD}\u{FFFD}!");
        assert!(done.lossy && !done.truncated);
    }

    #[test]
    fn cut_sequence_is_dropped_not_replaced() {
        let mut c = Capture::new(4);
        c.push("ab\u{20AC}".as_bytes()); // euro sign: 3 bytes, cut after 2
        let done = c.finish();
        assert_eq!(done.text, "ab");
        assert!(done.truncated && !done.lossy);
        let mut c = Capture::new(5);
        c.push("ab\u{20AC}x".as_bytes());
        assert_eq!(c.finish().text, "ab\u{20AC}");
    }

    #[test]
    fn peek_leaves_the_capture_alone() {
        let mut c = Capture::new(6);
        c.push(b"ab\xe2\x82");
        let p = c.peek();
        assert_eq!(
            (p.text.as_ref(), p.total, p.truncated, p.lossy),
            ("ab", 4, false, false)
        );
        c.push(b"\xacxyz");
        let p = c.peek();
        assert_eq!(
            (p.text.as_ref(), p.total, p.truncated, p.lossy),
            ("ab\u{20AC}x", 8, true, false)
        );
        c.push(b"more");
        assert_eq!(c.peek().total, 12);
        assert_eq!(c.kept.len(), 6);
        let done = c.finish();
        assert_eq!((done.text.as_str(), done.total), ("ab\u{20AC}x", 12));

        let mut c = Capture::new(10);
        c.push(b"a\xffb");
        let p = c.peek();
        assert_eq!((p.text.as_ref(), p.lossy), ("a\u{FFFD}b", true));
        assert_eq!(c.finish().text, "a\u{FFFD}b");
        let empty = Capture::new(0);
        let p = empty.peek();
        assert_eq!((p.text.as_ref(), p.total, p.truncated), ("", 0, false));
    }

    #[test]
    fn incomplete_tail_lengths() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(b"a\xe2\x82"), 2);
        assert_eq!(incomplete_tail(b"a\xe2"), 1);
        assert_eq!(incomplete_tail(b"a\xe2\x82\xac"), 0);
        assert_eq!(incomplete_tail(b"\xf0\x9f\x98"), 3);
    }
}

//! The send queue: whole frames sent in order from an offset into the first.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Frames waiting for rustls, sent in order from an offset into the
/// first: taking `n` bytes never moves the rest (no `drain` of one big
/// buffer, so sending stays linear however large the queue).
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

    /// Nothing left to take.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Frames (whole or partly taken) still queued.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Up to `max` slices of what is left, in order.
    pub fn slices(&self, max: usize) -> Vec<IoSlice<'_>> {
        self.frames
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, f)| {
                IoSlice::new(if i == 0 {
                    f.get(self.offset..).unwrap_or(&[])
                } else {
                    f
                })
            })
            .collect()
    }

    /// Fills `out` with slices of what is left, in order, one per frame
    /// (no allocation); returns how many were filled.
    pub fn fill_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slot, (i, f)) in out.iter_mut().zip(self.frames.iter().enumerate()) {
            *slot = IoSlice::new(if i == 0 {
                f.get(self.offset..).unwrap_or(&[])
            } else {
                f
            });
            filled += 1;
        }
        filled
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
            let left = front.len().saturating_sub(self.offset);
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

    /// Drops everything queued; the memory is given back.
    pub fn clear(&mut self) {
        *self = OutQueue::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(q: &OutQueue) -> Vec<u8> {
        q.slices(64)
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect()
    }

    #[test]
    fn the_out_queue_sends_frames_in_order_from_an_offset() {
        let mut q = OutQueue::default();
        q.push(b"abc".to_vec());
        q.push(Vec::new());
        q.push(b"defg".to_vec());
        assert_eq!(q.len(), 7);
        assert_eq!(joined(&q), b"abcdefg");
        q.consume(2);
        assert_eq!(joined(&q), b"cdefg");
        q.consume(1);
        assert_eq!(q.frames(), 1, "a finished frame is freed");
        q.consume(3);
        assert_eq!(joined(&q), b"g");
        q.consume(10);
        assert!(q.is_empty());
        assert_eq!(q.frames(), 0);
        assert_eq!(q.slices(4).len(), 0);
    }

    #[test]
    fn filled_slices_match_the_allocated_ones() {
        let mut q = OutQueue::default();
        for i in 0..5u8 {
            q.push(vec![i; 2 + usize::from(i)]);
        }
        q.consume(3);
        let mut iov = [IoSlice::new(&[]); 3];
        let n = q.fill_slices(&mut iov);
        assert_eq!(n, 3);
        let want = q.slices(3);
        for (a, b) in iov.iter().zip(want.iter()) {
            assert_eq!(&**a, &**b);
        }
        {
            let mut many = [IoSlice::new(&[]); 10];
            assert_eq!(q.fill_slices(&mut many), 4);
        }
        q.clear();
        let mut empty = [IoSlice::new(&[]); 2];
        assert_eq!(q.fill_slices(&mut empty), 0);
    }

    #[test]
    fn slices_stop_at_the_maximum() {
        let mut q = OutQueue::default();
        for i in 0..10u8 {
            q.push(vec![i; 3]);
        }
        q.consume(1);
        let s = q.slices(4);
        assert_eq!(s.len(), 4);
        assert_eq!(&*s[0], &[0, 0]);
        assert_eq!(&*s[3], &[3, 3, 3]);
        q.clear();
        assert!(q.is_empty());
        assert_eq!(q.frames(), 0);
    }
}

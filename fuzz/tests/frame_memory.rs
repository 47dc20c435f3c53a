//! Regression test for a soak-test finding, fixed in proto/src/frame.rs:
//! after a line longer than the maximum, `FrameDecoder` kept the capacity
//! of its partial-line buffer (`partial.clear()` in `too_long`), so every
//! connection that once received an oversized line held about `max_frame`
//! bytes (16 MiB by default) until its next complete line.
//! Run with `cargo test --manifest-path fuzz/Cargo.toml`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use basicagent_proto::FrameDecoder;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator with the same
// arguments; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::SeqCst);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn an_oversized_line_does_not_keep_max_frame_bytes() {
    const MAX: usize = 16 << 20;
    let mut d = FrameDecoder::new(MAX);
    let before = LIVE.load(Ordering::SeqCst);
    // 17 MiB without a newline, in 64 KiB reads as the reactor does.
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..(17 << 4) {
        d.push(&chunk);
    }
    assert!(matches!(d.next_frame(), Some(Err(_))), "too long reported");
    drop(chunk);
    let held = LIVE.load(Ordering::SeqCst) - before;
    assert!(held < 1 << 20, "decoder holds {held} bytes after an oversized line");
}

//! Fuzzes `FrameDecoder` (the line splitter): arbitrary bytes, arbitrary
//! chunking, a small maximum. Checks that the frames and errors do not
//! depend on how the bytes were chunked, that no frame holds a `\n` or is
//! longer than the maximum (plus a `\r`), and that the buffered partial
//! line stays bounded by the maximum (memory bounded whatever the peer
//! sends).
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

use basicagent_proto::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<u8>, Vec<u8>)| {
    let (max, cuts, data) = input;
    let max = usize::from(max % 4096) + 1;

    let mut whole = FrameDecoder::new(max);
    whole.push(&data);
    let mut expected = Vec::new();
    while let Some(f) = whole.next_frame() {
        expected.push(f);
    }

    let mut chunked = FrameDecoder::new(max);
    let mut got = Vec::new();
    let mut rest = &data[..];
    let mut cut = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = usize::from(cut.next().copied().unwrap_or(255))
            .max(1)
            .min(rest.len());
        chunked.push(&rest[..n]);
        rest = &rest[n..];
        assert!(
            chunked.buffered_len() <= max + 1,
            "buffered {} bytes with max {max}",
            chunked.buffered_len()
        );
        while let Some(f) = chunked.next_frame() {
            got.push(f);
        }
    }
    assert_eq!(expected, got, "chunking changed the frames");
    for frame in got.iter().flatten() {
        assert!(!frame.contains(&b'\n'), "frame holds a newline");
        assert!(
            frame.len() <= max + 1,
            "frame of {} bytes with max {max}",
            frame.len()
        );
    }
});

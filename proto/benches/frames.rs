//! Criterion micro-benchmarks of the wire path without sockets: splitting
//! bytes into frames (`FrameDecoder`), reading a request
//! (`Incoming::classify`, `Request::parse`) and writing a response
//! (`Response::write_frame`). Baseline in the same run: `memchr`-style
//! splitting with `slice::split`, the least any line splitter can do.

use basicagent_proto::{FrameDecoder, Incoming, Request, Response, Retcode};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const REQUEST: &[u8] = br#"{"id":12345,"method":"getinfo.kernel","args":"-a"}"#;

fn stream(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * (REQUEST.len() + 1));
    for _ in 0..n {
        out.extend_from_slice(REQUEST);
        out.push(b'\n');
    }
    out
}

fn frames(c: &mut Criterion) {
    let bytes = stream(1000);
    let mut g = c.benchmark_group("frame_split_1000");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("FrameDecoder, 16 KiB reads", |b| {
        b.iter(|| {
            let mut dec = FrameDecoder::default();
            let mut n = 0;
            for chunk in bytes.chunks(16 * 1024) {
                dec.push(chunk);
                while let Some(f) = dec.next_frame() {
                    n += f.map_or(0, |f| f.len());
                }
            }
            black_box(n)
        })
    });
    g.bench_function("baseline: slice::split + to_vec", |b| {
        b.iter(|| {
            let n: usize = bytes
                .split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| black_box(l.to_vec()).len())
                .sum();
            black_box(n)
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.bench_function("Incoming::classify(request)", |b| {
        b.iter(|| black_box(Incoming::classify(black_box(REQUEST)).is_ok()))
    });
    g.bench_function("Request::parse", |b| {
        b.iter(|| black_box(Request::parse(black_box(REQUEST)).is_ok()))
    });
    g.bench_function("baseline: serde_json::from_slice::<Value>", |b| {
        b.iter(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(REQUEST)).is_ok())
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let data = serde_json::json!({"sysname": "Linux", "release": "6.1.0-18-amd64",
        "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1", "machine": "x86_64"});
    let id = Request::parse(REQUEST).ok().and_then(|r| r.id);
    let response = Response::new(id, Retcode::SUCCESS).with_data(&data);
    let mut g = c.benchmark_group("encode");
    g.bench_function("Response::write_frame", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            response.write_frame(&mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, frames, decode, encode);
criterion_main!(benches);

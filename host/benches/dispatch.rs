//! Criterion benchmark of the dispatch path without sockets: a request
//! frame in → `Dispatcher::dispatch` → plugin call (`getinfo.kernel`, the
//! real `.so` from target/release or target/debug) → response bytes out
//! (the completion taken from the io side's mailbox, then
//! `Dispatcher::complete`). Baseline in the same run: the built-in `ping`, which
//! takes the same path minus the plugin.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basicagent_abi::{HostSettings, PluginRegistry};
use basicagent_host::core::dispatch::{AgentFacts, Dispatcher, Mail, Sink};
use basicagent_host::core::tasks::TaskLimits;
use basicagent_host::io::mailbox::Mailbox;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn plugin_dir() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p))
        .find(|d| d.join("libgetinfo_kernel.so").exists())
}

/// One request through the dispatcher; returns the response length.
fn round_trip(d: &mut Dispatcher, frame: &[u8]) -> usize {
    if let Some(out) = d.dispatch(1, frame, Instant::now()) {
        return out.len();
    }
    // Completed inside the call for the collectors; a short spin otherwise.
    loop {
        if let Some(Mail::Finished(f)) = d.try_next() {
            return d.complete(f, Instant::now()).frame.len();
        }
        std::hint::spin_loop();
    }
}

fn dispatch(c: &mut Criterion) {
    let Some(dir) = plugin_dir() else {
        eprintln!("dispatch bench: no libgetinfo_kernel.so in target/{{release,debug}}; run cargo build first");
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let poll = mio::Poll::new().unwrap();
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
    let tasks = basicagent_host::io::taskfiles::open(
        &state.path().join("tasks"),
        TaskLimits {
            max_tasks: 1000,
            max_bytes: 64 << 20,
            retention: Duration::from_secs(7 * 86400),
            max_frame: 16 << 20,
        },
    )
    .unwrap();
    let facts = AgentFacts {
        host_id: "0b7f5d1c-445e-49c0-8612-111b741b920f".into(),
        name: "bench".into(),
        version: "0".into(),
        started: Instant::now(),
    };
    let registry = PluginRegistry::new(dir, HostSettings::default());
    let mailbox = Mailbox::new(waker);
    mailbox
        .start_files(state.path().join("tasks"), 16 << 20)
        .unwrap();
    let mut d = Dispatcher::new(registry, 64, mailbox as Arc<dyn Sink>, facts, tasks);
    // Load the plugin outside the measurement.
    assert!(round_trip(&mut d, br#"{"id":1,"method":"getinfo.kernel"}"#) > 0);

    let mut g = c.benchmark_group("dispatch");
    g.bench_function("getinfo.kernel: frame in -> response bytes out", |b| {
        b.iter(|| {
            black_box(round_trip(
                &mut d,
                black_box(br#"{"id":7,"method":"getinfo.kernel"}"#),
            ))
        })
    });
    g.bench_function("baseline: built-in ping", |b| {
        b.iter(|| {
            black_box(round_trip(
                &mut d,
                black_box(br#"{"id":7,"method":"ping"}"#),
            ))
        })
    });
    g.bench_function("unknown method (3022)", |b| {
        b.iter(|| {
            black_box(round_trip(
                &mut d,
                black_box(br#"{"id":7,"method":"nosuch.thing"}"#),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);

//! The collector core (parse passwd, group, shadow, login.defs, shells +
//! build + serialise JSON) for `-A` over generated files of 1 000, 5 000
//! and 10 000 users, so that linear growth shows. Target: <= 20 ms at
//! 10 000 users.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use getinfo_users::{collect, Selection, ShadowSource, Sources};

/// Number of shared groups; each user is a member of 3 of them.
const SHARED_GROUPS: usize = 64;

struct Fixture {
    passwd: String,
    group: String,
    shadow: String,
}

/// `n` users: ~5 % system accounts, the rest normal users with a personal
/// group, 3 shared-group memberships each, and a sha512-crypt-like hash.
fn generate(n: usize) -> Fixture {
    let mut passwd = String::with_capacity(n * 80);
    let mut group = String::with_capacity(n * 40);
    let mut shadow = String::with_capacity(n * 140);
    let mut members: Vec<Vec<String>> = vec![Vec::new(); SHARED_GROUPS];
    for i in 0..n {
        let (name, uid) = if i % 20 == 0 {
            (format!("svc{i}"), 100 + i as u32 / 20)
        } else {
            (format!("user{i}"), 1000 + i as u32)
        };
        let shell = if uid < 1000 {
            "/usr/sbin/nologin"
        } else {
            "/bin/bash"
        };
        let _ = writeln!(
            passwd,
            "{name}:x:{uid}:{uid}:User {i},Room {i},,:/home/{name}:{shell}"
        );
        let _ = writeln!(group, "{name}:x:{uid}:");
        let _ = writeln!(shadow, "{name}:$6$salt{i:08}$HASHHASHHASHHASHHASHHASHHASHHASHHASHHASHHASHHASH{i:08}:19{i:03}:0:99999:7:::");
        for k in 0..3 {
            members[(i * 7 + k * 13) % SHARED_GROUPS].push(name.clone());
        }
    }
    for (g, m) in members.iter().enumerate() {
        let _ = writeln!(group, "shared{g}:x:{}:{}", 70000 + g, m.join(","));
    }
    Fixture {
        passwd,
        group,
        shadow,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("collect_all");
    for n in [1_000usize, 5_000, 10_000] {
        let f = generate(n);
        let src = Sources {
            passwd: f.passwd.as_bytes(),
            group: f.group.as_bytes(),
            login_defs: Some(b"UID_MIN 1000\nUID_MAX 60000\n"),
            shells: Some(b"/bin/sh\n/bin/bash\n"),
            shadow: ShadowSource::Readable(f.shadow.as_bytes()),
        };
        let out = collect(&src, &Selection::All).expect("collect");
        assert!(!out.contains('$'));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &src, |b, src| {
            b.iter(|| collect(black_box(src), &Selection::All).expect("collect"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Measures `sync.bash` against its baseline in the same run (numbers are
//! reported, not asserted): a `true` round trip in-process vs
//! `std::process::Command` `bash -c true`, the command rate with 4
//! concurrent callers, and whole-process cost (this binary with `--once`,
//! a ctl-like load-call-print, vs `bash -c true`).
//!
//! `cargo run --release -p basicagent-sync-bash --example bench [-- --ctl PATH]`;
//! `-- --containment`: the `true` rate with a cgroup per command vs
//! `containment = "off"`, same run (issue 15).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use basicagent_abi::{HostSettings, Plugin};

fn plugin_path() -> PathBuf {
    // target/<profile>/examples/bench: the freshest of target/<profile>/
    // and target/<profile>/deps/ (cargo rebuilds the latter for examples).
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    [dir.join("deps"), dir.to_owned()]
        .into_iter()
        .map(|d| d.join("libsync_bash.so"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("libsync_bash.so: build it with cargo build --release -p basicagent-sync-bash")
}

fn load() -> Plugin {
    Plugin::load(&plugin_path(), &HostSettings::default(), false).expect("load libsync_bash.so")
}

fn call(p: &Plugin, req: &[u8]) -> u32 {
    let (tx, rx) = mpsc::channel();
    p.call(
        req,
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    rx.recv().expect("answer").retcode
}

fn bash_true() {
    let st = Command::new("/bin/bash")
        .args(["-c", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    assert!(st.status.success());
}

fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed() / n
}

fn rate(threads: usize, secs: u64, f: impl Fn() + Send + Sync + 'static) -> f64 {
    let f = Arc::new(f);
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, done) = (Arc::clone(&f), Arc::clone(&done));
            std::thread::spawn(move || {
                while Instant::now() < end {
                    f();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    for h in handles {
        h.join().expect("join");
    }
    done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn whole(n: u32, program: &str, args: &[&str]) -> Duration {
    per_call(n, || {
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let req = br#"{"cmd":"true"}"#;
    if args.get(1).map(String::as_str) == Some("--once") {
        let t0 = Instant::now();
        let p = load();
        let t1 = Instant::now();
        let code = call(&p, req);
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("load {:?} call {:?}", t1 - t0, t1.elapsed());
        }
        std::process::exit(if code == 2 { 0 } else { 1 });
    }
    if args.get(1).map(String::as_str) == Some("--contain-rate") {
        // One side of --containment: this process's plugin with
        // containment auto or off (the config is per process).
        let mode = args.get(2).map_or("auto", String::as_str);
        let settings = HostSettings {
            config_json: format!(r#"{{"containment":"{mode}"}}"#),
            ..HostSettings::default()
        };
        let p: &'static Plugin = Box::leak(Box::new(
            Plugin::load(&plugin_path(), &settings, false).expect("load libsync_bash.so"),
        ));
        for _ in 0..30 {
            call(p, req);
        }
        let serial = per_call(300, || assert_eq!(call(p, req), 2));
        let r = rate(4, 3, move || assert_eq!(call(p, req), 2));
        println!("{mode} {} {r:.0}", serial.as_micros());
        return;
    }
    if args.get(1).map(String::as_str) == Some("--containment") {
        // containment on vs off, same run, alternated to even out noise.
        let exe = args[0].clone();
        let mut sums = [(0u128, 0f64); 2];
        for round in 0..2 {
            for (i, mode) in ["auto", "off"].into_iter().enumerate() {
                let out = Command::new(&exe)
                    .args(["--contain-rate", mode])
                    .output()
                    .expect("run");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let f: Vec<&str> = text.split_whitespace().collect();
                let (us, r): (u128, f64) = (f[1].parse().expect("us"), f[2].parse().expect("rate"));
                println!(
                    "round {round} containment {mode}: serial {us} us/call, 4 callers {r:.0}/s"
                );
                sums[i].0 += us;
                sums[i].1 += r;
            }
        }
        let (on, off) = (sums[0], sums[1]);
        println!(
            "containment on vs off: serial {:+.1} % time per call, 4-caller rate {:+.1} %",
            (on.0 as f64 / off.0 as f64 - 1.0) * 100.0,
            (on.1 / off.1 - 1.0) * 100.0
        );
        return;
    }
    if args.get(1).map(String::as_str) == Some("--rate") {
        // Only the 4-caller rate (for CPU accounting with `time`).
        let p: &'static Plugin = Box::leak(Box::new(load()));
        let base = args.get(2).map(String::as_str) == Some("command");
        let r = if base {
            rate(4, 5, bash_true)
        } else {
            rate(4, 5, move || assert_eq!(call(p, req), 2))
        };
        println!("{} {r:.0}/s", if base { "Command" } else { "sync.bash" });
        return;
    }
    let ctl = args
        .iter()
        .position(|a| a == "--ctl")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let p: &'static Plugin = Box::leak(Box::new(load()));
    for _ in 0..50 {
        call(p, req);
        bash_true();
    }
    let n = 1000;
    let base = per_call(n, bash_true);
    let ours = per_call(n, || assert_eq!(call(p, req), 2));
    println!(
        "serial round trip: bash -c true via Command {base:?}, sync.bash true {ours:?} ({:+.1} %)",
        (ours.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0
    );
    let base_rate = rate(4, 3, bash_true);
    let our_rate = rate(4, 3, move || assert_eq!(call(p, req), 2));
    println!("4 concurrent callers: Command {base_rate:.0}/s, sync.bash {our_rate:.0}/s");
    let exe = args[0].clone();
    let n = 300;
    let base = whole(n, "/bin/bash", &["-c", "true"]);
    let once = whole(n, &exe, &["--once"]);
    println!(
        "whole process: bash -c true {base:?}, load+call+exit {once:?} ({:+.1} %)",
        (once.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0
    );
    if let Some(ctl) = ctl {
        let dir = plugin_path().parent().expect("dir").display().to_string();
        let t = whole(
            n,
            &ctl,
            &["-p", &dir, "-c", "sync.bash", "-j", r#"{"cmd":"true"}"#],
        );
        println!(
            "whole process via {ctl}: {t:?} ({:+.1} % over bash -c true)",
            (t.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0
        );
    }
}

//! Turns the server name into every address it has (protocol.md §1):
//! the matching hosts-file lines in file order, then DNS A and AAAA,
//! duplicates dropped, order kept — without ever blocking the event loop.
//!
//! Key design decision: hickory-resolver 0.25 is async-only, so a
//! [`Resolver`] owns one background thread running a current-thread tokio
//! runtime. The reactor hands it requests over a channel and collects
//! [`Resolved`] results after the thread has woken it through its
//! `mio::Waker`; the reactor itself never touches tokio. The hosts file is
//! parsed here (not by hickory) on every request, so edits are seen at once
//! and *every* matching line counts.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc as async_mpsc;

/// One finished resolution.
#[derive(Debug)]
pub struct Resolved {
    /// The token given to [`Resolver::request`].
    pub token: u64,
    /// Addresses in order, or why there are none. The hosts-file lines
    /// come first in their own result (`last: false`) so that they can be
    /// tried at once; the DNS answers follow (`last: true`, possibly empty,
    /// duplicates of hosts lines removed) when DNS has answered or given up.
    pub result: Result<Vec<SocketAddr>, ResolveError>,
    /// No more results for this token.
    pub last: bool,
}

/// Why a name has no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No hosts-file line matched and DNS failed or had no A/AAAA record.
    #[error("resolving {name}: {source}")]
    Dns {
        /// The name.
        name: String,
        /// The resolver's error.
        #[source]
        source: hickory_resolver::ResolveError,
    },
    /// DNS could not even be set up (e.g. an unreadable `/etc/resolv.conf`)
    /// and no hosts-file line matched.
    #[error("resolving {name}: no hosts entry and no DNS: {reason}")]
    NoDns {
        /// The name.
        name: String,
        /// Why DNS is unavailable.
        reason: String,
    },
}

/// Bounds on DNS lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsLimits {
    /// Time allowed for one query to one server.
    pub timeout: Duration,
    /// Tries per query.
    pub attempts: usize,
}

impl Default for DnsLimits {
    fn default() -> Self {
        DnsLimits {
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

struct Request {
    token: u64,
    name: String,
    port: u16,
}

/// A handle on the resolver thread. Dropping it stops and joins the thread
/// (lookups in flight are abandoned).
pub struct Resolver {
    requests: Option<async_mpsc::UnboundedSender<Request>>,
    results: mpsc::Receiver<Resolved>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts the resolver thread with the default [`DnsLimits`].
    ///
    /// `nameservers` empty: the system's configuration (`/etc/resolv.conf`).
    pub fn spawn(
        waker: Arc<mio::Waker>,
        hosts_file: PathBuf,
        nameservers: Vec<SocketAddr>,
    ) -> io::Result<Resolver> {
        Self::spawn_with_limits(waker, hosts_file, nameservers, DnsLimits::default())
    }

    /// Starts the resolver thread with explicit DNS limits.
    pub fn spawn_with_limits(
        waker: Arc<mio::Waker>,
        hosts_file: PathBuf,
        nameservers: Vec<SocketAddr>,
        limits: DnsLimits,
    ) -> io::Result<Resolver> {
        Self::start(waker, hosts_file, nameservers, Some(limits))
    }

    /// Starts a resolver that reads the hosts file only and never sends a
    /// DNS query (`server.dns = false`: closed networks, tests, demos).
    pub fn spawn_hosts_only(waker: Arc<mio::Waker>, hosts_file: PathBuf) -> io::Result<Resolver> {
        Self::start(waker, hosts_file, Vec::new(), None)
    }

    fn start(
        waker: Arc<mio::Waker>,
        hosts_file: PathBuf,
        nameservers: Vec<SocketAddr>,
        limits: Option<DnsLimits>,
    ) -> io::Result<Resolver> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (req_tx, mut req_rx) = async_mpsc::unbounded_channel::<Request>();
        let (res_tx, res_rx) = mpsc::channel::<Resolved>();
        let thread = std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || {
                // hickory's constructors need the runtime context (they may spawn).
                let dns = match limits {
                    Some(limits) => runtime.block_on(async { build_dns(&nameservers, limits) }),
                    None => {
                        Err("DNS disabled by the configuration (server.dns = false)".to_owned())
                    }
                };
                let dns = Arc::new(dns);
                runtime.block_on(async move {
                    while let Some(req) = req_rx.recv().await {
                        let dns = Arc::clone(&dns);
                        let hosts_file = hosts_file.clone();
                        let res_tx = res_tx.clone();
                        let waker = Arc::clone(&waker);
                        tokio::spawn(async move {
                            let emit = |result, last| {
                                let done = Resolved {
                                    token: req.token,
                                    result,
                                    last,
                                };
                                if res_tx.send(done).is_ok() {
                                    if let Err(e) = waker.wake() {
                                        log::error!("resolver: waking the event loop: {e}");
                                    }
                                }
                            };
                            resolve(&hosts_file, &dns, &req.name, req.port, emit).await;
                        });
                    }
                });
                // Dropping the runtime here cancels lookups still in flight.
            })?;
        Ok(Resolver {
            requests: Some(req_tx),
            results: res_rx,
            thread: Some(thread),
        })
    }

    /// Queues a lookup of `name` (an IP literal or a host name); returns at once.
    /// The result arrives through [`Resolver::try_result`] with the same token.
    pub fn request(&self, token: u64, name: String, port: u16) {
        let sent = self
            .requests
            .as_ref()
            .map(|tx| tx.send(Request { token, name, port }).is_ok());
        if sent != Some(true) {
            log::error!("resolver thread is gone; request {token} dropped");
        }
    }

    /// Takes one finished lookup, if any. Call until `None` after each wake.
    pub fn try_result(&self) -> Option<Resolved> {
        self.results.try_recv().ok()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // Closing the channel ends the thread's receive loop.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("resolver thread panicked");
            }
        }
    }
}

/// The DNS half, or why there is none.
type Dns = Result<TokioResolver, String>;

fn build_dns(nameservers: &[SocketAddr], limits: DnsLimits) -> Dns {
    let provider = TokioConnectionProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("system DNS configuration: {e}"))?
    } else {
        let mut config = ResolverConfig::new();
        for &addr in nameservers {
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = limits.timeout;
    opts.attempts = limits.attempts.max(1);
    Ok(builder.build())
}

/// Resolves one name: IP literal, else hosts-file lines then DNS.
async fn resolve(
    hosts_file: &Path,
    dns: &Dns,
    name: &str,
    port: u16,
    emit: impl Fn(Result<Vec<SocketAddr>, ResolveError>, bool),
) {
    let with_port = |ips: &[IpAddr]| {
        ips.iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect::<Vec<_>>()
    };
    if let Some(ip) = ip_literal(name) {
        return emit(Ok(vec![SocketAddr::new(ip, port)]), true);
    }
    let mut hosts = match std::fs::read_to_string(hosts_file) {
        Ok(text) => hosts_lookup(&text, name),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("reading {}: {e}", hosts_file.display());
            }
            Vec::new()
        }
    };
    let mut seen = HashSet::new();
    hosts.retain(|ip| seen.insert(*ip));
    if !hosts.is_empty() {
        // Usable now: a dead DNS server must not delay the hosts lines.
        emit(Ok(with_port(&hosts)), false);
    }
    let dns_ips = match dns {
        Ok(dns) => dns
            .lookup_ip(name)
            .await
            .map(|found| {
                // A records first, then AAAA, each in the order answered.
                let (mut v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
                    found.iter().partition(IpAddr::is_ipv4);
                v4.extend(v6);
                v4
            })
            .map_err(|source| ResolveError::Dns {
                name: name.to_owned(),
                source,
            }),
        Err(reason) => Err(ResolveError::NoDns {
            name: name.to_owned(),
            reason: reason.clone(),
        }),
    };
    match dns_ips {
        Ok(mut found) => {
            found.retain(|ip| seen.insert(*ip));
            emit(Ok(with_port(&found)), true);
        }
        Err(e) if !hosts.is_empty() => {
            log::debug!("{e} (using the hosts entries)");
            emit(Ok(Vec::new()), true);
        }
        Err(e) => emit(Err(e), true),
    }
}

/// `name` as an IP address (`[v6]` accepted), if it is one.
fn ip_literal(name: &str) -> Option<IpAddr> {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse().ok()
}

/// Every address of `name` in hosts-file text, in file order.
///
/// A line is `ADDRESS NAME [ALIAS...]`; `#` starts a comment; names match
/// case-insensitively, a trailing dot ignored; malformed lines are skipped.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let wanted = name.trim_end_matches('.');
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields.any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(wanted)) {
            found.push(ip);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const HOSTS: &str = "\
# The documented way to list several servers
127.0.0.1\tlocalhost
127.0.0.1   config.cargo.com
127.0.0.2   config.cargo.com  # second
  127.0.0.3 other CONFIG.Cargo.COM
::1 ip6-localhost ip6-loopback config.cargo.com
#127.0.0.9 config.cargo.com
not-an-ip config.cargo.com
10.0.0.1
fe80::1%eth0 config.cargo.com
10.0.0.2 notconfig.cargo.com config.cargo.co
127.0.0.1 config.cargo.com.
";

    #[test]
    fn every_line_in_file_order_with_aliases_ipv6_and_case() {
        assert_eq!(
            hosts_lookup(HOSTS, "config.cargo.com"),
            ips(&["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1", "127.0.0.1"])
        );
        assert_eq!(
            hosts_lookup(HOSTS, "Config.Cargo.Com."),
            hosts_lookup(HOSTS, "config.cargo.com")
        );
        assert_eq!(hosts_lookup(HOSTS, "ip6-loopback"), ips(&["::1"]));
        assert_eq!(hosts_lookup(HOSTS, "other"), ips(&["127.0.0.3"]));
        assert_eq!(hosts_lookup(HOSTS, "second"), ips(&[]));
        assert_eq!(hosts_lookup(HOSTS, "missing"), ips(&[]));
        assert_eq!(hosts_lookup("", "x"), ips(&[]));
    }

    #[test]
    fn hosts_only_never_asks_dns() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.7 only.example\n").unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let resolver = Resolver::spawn_hosts_only(waker, hosts).unwrap();
        resolver.request(1, "only.example".into(), 9);
        let r = run(&resolver, &mut poll, 1);
        assert_eq!(
            r.result.unwrap(),
            vec!["127.0.0.7:9".parse::<SocketAddr>().unwrap()]
        );
        resolver.request(2, "missing.example".into(), 9);
        let e = run(&resolver, &mut poll, 2).result.unwrap_err();
        assert!(e.to_string().contains("DNS disabled"), "{e}");
    }

    #[test]
    fn literals() {
        assert_eq!(ip_literal("10.1.2.3"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("::1"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("config.cargo.com"), None);
    }

    fn run(resolver: &Resolver, poll: &mut mio::Poll, token: u64) -> Resolved {
        let mut events = mio::Events::with_capacity(4);
        let mut merged: Vec<SocketAddr> = Vec::new();
        loop {
            while let Some(r) = resolver.try_result() {
                assert_eq!(r.token, token);
                match r.result {
                    Ok(v) => merged.extend(v),
                    Err(e) if merged.is_empty() => {
                        return Resolved {
                            token,
                            result: Err(e),
                            last: true,
                        }
                    }
                    Err(_) => {}
                }
                if r.last {
                    return Resolved {
                        token,
                        result: Ok(merged),
                        last: true,
                    };
                }
            }
            poll.poll(&mut events, Some(Duration::from_secs(30)))
                .unwrap();
            assert!(!events.is_empty(), "resolver did not wake the loop");
        }
    }

    #[test]
    fn literal_and_hosts_only_without_touching_dns() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "127.0.0.7 agent-test.invalid\n127.0.0.7 agent-test.invalid\n::1 agent-test.invalid\n",
        )
        .unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).unwrap());
        // A nameserver nobody listens on; DNS fails, the hosts lines win.
        let resolver = Resolver::spawn_with_limits(
            waker,
            hosts.clone(),
            vec!["127.0.0.1:9".parse().unwrap()],
            DnsLimits {
                timeout: Duration::from_millis(200),
                attempts: 1,
            },
        )
        .unwrap();
        resolver.request(1, "127.0.0.9".into(), 8443);
        let r = run(&resolver, &mut poll, 1);
        assert_eq!(r.result.unwrap(), vec!["127.0.0.9:8443".parse().unwrap()]);
        resolver.request(2, "[::1]".into(), 1);
        assert_eq!(
            run(&resolver, &mut poll, 2).result.unwrap(),
            vec!["[::1]:1".parse().unwrap()]
        );
        resolver.request(3, "AGENT-TEST.invalid".into(), 8443);
        assert_eq!(
            run(&resolver, &mut poll, 3).result.unwrap(),
            vec![
                "127.0.0.7:8443".parse().unwrap(),
                "[::1]:8443".parse().unwrap()
            ]
        );
        // Edits are seen on the next request.
        std::fs::write(&hosts, "127.0.0.8 agent-test.invalid\n").unwrap();
        resolver.request(4, "agent-test.invalid".into(), 1);
        assert_eq!(
            run(&resolver, &mut poll, 4).result.unwrap(),
            vec!["127.0.0.8:1".parse().unwrap()]
        );
        drop(resolver);
    }
}

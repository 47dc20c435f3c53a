//! The server side of the init handshake (protocol §4): the agent's first
//! frame, the server's policy and the connection's addresses in, accept /
//! redirect / reject and the reply frame out.
//!
//! Pure: no I/O, no clock, no logging; a server (the reference server,
//! the in-memory test pairs) decides with [`answer_init`] and sends
//! [`Verdict::reply`]. Checks run in this order, the first that applies
//! decides: the frame is a valid init; with mTLS, the client certificate
//! names the init's host id; at the session limit the agent is sent to
//! the configured peers or refused `3026 Busy`; then the [`InitPolicy`].

use std::net::SocketAddr;

use crate::frame::FrameError;
use crate::init::{redirect_json, Init, InitReply};
use crate::retcode::Retcode;
use crate::server_list::{parse_server_list, ServerAddr, ServerAddrError};

/// The server's init policy (one per process, from its command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitPolicy {
    /// Accept every agent.
    Accept,
    /// Answer every init with this list, sent verbatim.
    Redirect(String),
    /// Send each host id to one entry, chosen by a stable hash of the id; an
    /// entry equal to the address the agent reached means accept.
    Spread(Vec<ServerAddr>),
    /// Refuse every agent with this message.
    Reject(String),
}

/// What the policy alone says for one host id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Redirect(String),
    Reject(String),
}

/// A list given on the command line is strict: every entry must be valid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    BadEntry(ServerAddrError),
    #[error("the server list is empty")]
    Empty,
}

/// Parses `list` strictly (any bad entry is an error), ports defaulting to
/// `default_port`.
pub fn strict_list(list: &str, default_port: u16) -> Result<Vec<ServerAddr>, PolicyError> {
    let parsed = parse_server_list(list, default_port);
    if let Some(e) = parsed.errors.into_iter().next() {
        return Err(PolicyError::BadEntry(e));
    }
    if parsed.addrs.is_empty() {
        return Err(PolicyError::Empty);
    }
    Ok(parsed.addrs)
}

/// FNV-1a, 64 bit: stable across runs, builds and platforms (unlike std's
/// hasher). [`InitPolicy::Spread`] picks its entry with it.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl InitPolicy {
    /// The decision for `host_id`; `own` are this server's addresses (the
    /// `--listen` address and the connection's local address).
    pub fn decide(&self, host_id: &str, own: &[SocketAddr]) -> Decision {
        match self {
            InitPolicy::Accept => Decision::Accept,
            InitPolicy::Redirect(list) => Decision::Redirect(list.clone()),
            InitPolicy::Reject(message) => Decision::Reject(message.clone()),
            InitPolicy::Spread(entries) => {
                let n = entries.len() as u64;
                if n == 0 {
                    return Decision::Accept;
                }
                let index = usize::try_from(fnv1a(host_id.as_bytes()) % n).unwrap_or(0);
                match entries.get(index) {
                    Some(ServerAddr::Ip(sa)) if own.contains(sa) => Decision::Accept,
                    Some(other) => Decision::Redirect(other.to_string()),
                    None => Decision::Accept,
                }
            }
        }
    }

    /// Where agents go when this server is full: the redirect list, or
    /// the spread entries other than this server's own; `None` when there
    /// is no peer to send them to.
    pub fn peers(&self, own: &[SocketAddr]) -> Option<String> {
        match self {
            InitPolicy::Redirect(list) => Some(list.clone()),
            InitPolicy::Spread(entries) => {
                let others: Vec<String> = entries
                    .iter()
                    .filter(|e| !matches!(e, ServerAddr::Ip(sa) if own.contains(sa)))
                    .map(ToString::to_string)
                    .collect();
                (!others.is_empty()).then(|| others.join(","))
            }
            InitPolicy::Accept | InitPolicy::Reject(_) => None,
        }
    }
}

/// What the server knows about the connection when an init arrives.
#[derive(Debug, Clone, Copy)]
pub struct InitContext<'a> {
    pub policy: &'a InitPolicy,
    /// This server's addresses: its `--listen` address and the
    /// connection's local address.
    pub own: &'a [SocketAddr],
    /// With mTLS: `Some(host id the client certificate is bound to)`
    /// (`Some(None)`: the certificate names none). `None`: no mTLS.
    pub client_host: Option<Option<&'a str>>,
    /// `Some(limit)`: the session limit is reached.
    pub full: Option<usize>,
    /// The heartbeat announced on accept (`None`: none sent).
    pub heartbeat: Option<u64>,
}

/// Why an agent was redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectCause {
    /// The policy sends it elsewhere.
    Policy,
    /// The server is full; the list is its peers.
    Full,
}

/// Why an agent was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectCause {
    /// The first frame is not a valid init; the parse error (or the frame
    /// limit) in words.
    InvalidInit(String),
    /// The client certificate is for another host id.
    Identity,
    /// The server is full and has no peers.
    Full,
    /// The policy refuses every agent.
    Policy,
}

/// The answer to an init.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Accepted: the session goes on with this init.
    Accept {
        init: Box<Init>,
        heartbeat: Option<u64>,
    },
    /// Sent elsewhere: the reply is the list, verbatim; the session ends.
    Redirect {
        host: String,
        list: String,
        cause: RedirectCause,
    },
    /// Refused: the reply carries `retcode` and `message`; the session ends.
    Reject {
        /// `None` when the init was not valid.
        host: Option<String>,
        retcode: Retcode,
        message: String,
        cause: RejectCause,
    },
}

impl Verdict {
    /// The reply frame, `\n` included.
    pub fn reply(&self) -> Vec<u8> {
        let mut out = match self {
            Verdict::Accept { heartbeat, .. } => InitReply::Accepted {
                heartbeat: *heartbeat,
            }
            .to_json(),
            Verdict::Redirect { list, .. } => redirect_json(list),
            Verdict::Reject {
                retcode, message, ..
            } => InitReply::rejected(*retcode, message.clone()).to_json(),
        }
        .into_bytes();
        out.push(b'\n');
        out
    }

    /// A redirect to `list` for `host` (a server's own reasons, such as a
    /// cluster's owner of the host; given as [`RedirectCause::Policy`]).
    pub fn redirect(host: impl Into<String>, list: impl Into<String>) -> Verdict {
        Verdict::Redirect {
            host: host.into(),
            list: list.into(),
            cause: RedirectCause::Policy,
        }
    }

    /// A refusal with `retcode` and `message` for `host`.
    pub fn reject(
        host: impl Into<String>,
        retcode: Retcode,
        message: impl Into<String>,
        cause: RejectCause,
    ) -> Verdict {
        Verdict::Reject {
            host: Some(host.into()),
            retcode,
            message: message.into(),
            cause,
        }
    }
}

/// The server's answer to the first frame of a session (`frame` as the
/// frame decoder gave it).
pub fn answer_init(frame: Result<&[u8], &FrameError>, ctx: &InitContext<'_>) -> Verdict {
    let parsed = match frame {
        Ok(bytes) => Init::parse(bytes).map_err(|e| e.to_string()),
        Err(FrameError::TooLong { limit }) => Err(format!("init frame longer than {limit} bytes")),
    };
    let init = match parsed {
        Ok(init) => init,
        Err(error) => {
            return Verdict::Reject {
                host: None,
                retcode: Retcode::INVALID_REQUEST,
                message: format!("expected init: {error}"),
                cause: RejectCause::InvalidInit(error),
            }
        }
    };
    let host = init.hostname.clone();
    if let Some(bound) = ctx.client_host {
        if bound != Some(host.as_str()) {
            let message = format!(
                "the client certificate is for host id {}, not {host:?}",
                bound.map_or("(none)".to_owned(), |b| format!("{b:?}"))
            );
            return Verdict::reject(
                host,
                Retcode::PERMISSION_DENIED,
                message,
                RejectCause::Identity,
            );
        }
    }
    if let Some(limit) = ctx.full {
        return match ctx.policy.peers(ctx.own) {
            Some(list) => Verdict::Redirect {
                host,
                list,
                cause: RedirectCause::Full,
            },
            None => Verdict::reject(
                host,
                Retcode::BUSY,
                format!("server busy: it holds its limit of {limit} agent sessions; retry later"),
                RejectCause::Full,
            ),
        };
    }
    match ctx.policy.decide(&host, ctx.own) {
        Decision::Accept => Verdict::Accept {
            init: Box::new(init),
            heartbeat: ctx.heartbeat,
        },
        Decision::Redirect(list) => Verdict::Redirect {
            host,
            list,
            cause: RedirectCause::Policy,
        },
        Decision::Reject(message) => Verdict::reject(
            host,
            Retcode::PERMISSION_DENIED,
            message,
            RejectCause::Policy,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(policy: &'a InitPolicy, own: &'a [SocketAddr]) -> InitContext<'a> {
        InitContext {
            policy,
            own,
            client_host: None,
            full: None,
            heartbeat: Some(30),
        }
    }

    const INIT: &[u8] = br#"{"method":"init","hostname":"h-1","version":"1.2","name":"box","plugins":["getinfo.kernel"]}"#;

    fn own() -> Vec<SocketAddr> {
        vec!["127.0.0.2:8443".parse().expect("addr")]
    }

    #[test]
    fn spread_is_deterministic_and_accepts_its_own_share() {
        let own = own();
        let policy = InitPolicy::Spread(
            strict_list("127.0.0.2,127.0.0.3,127.0.0.4:9000", 8443).expect("list"),
        );
        let mut seen = std::collections::HashMap::new();
        for i in 0..300 {
            let host = format!("host-{i}");
            let d = policy.decide(&host, &own);
            assert_eq!(d, policy.decide(&host, &own));
            *seen.entry(format!("{d:?}")).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.contains_key("Accept"));
        assert!(seen.contains_key("Redirect(\"127.0.0.3:8443\")"));
        assert!(seen.contains_key("Redirect(\"127.0.0.4:9000\")"));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn strict_lists() {
        assert!(matches!(
            strict_list("127.0.0.1,bad:0", 1),
            Err(PolicyError::BadEntry(_))
        ));
        assert!(matches!(strict_list(" , ", 1), Err(PolicyError::Empty)));
        let p = InitPolicy::Reject("no".into());
        assert_eq!(p.decide("h", &[]), Decision::Reject("no".into()));
    }

    #[test]
    fn a_valid_init_is_accepted_with_the_heartbeat() {
        let own = own();
        let v = answer_init(Ok(INIT), &ctx(&InitPolicy::Accept, &own));
        let Verdict::Accept { init, heartbeat } = &v else {
            panic!("{v:?}")
        };
        assert_eq!(init.hostname, "h-1");
        assert_eq!(init.plugins, vec!["getinfo.kernel".to_owned()]);
        assert_eq!(*heartbeat, Some(30));
        let reply = v.reply();
        assert!(reply.ends_with(b"}\n"));
        assert_eq!(
            InitReply::parse(&reply[..reply.len() - 1], 8443).expect("reply"),
            InitReply::Accepted {
                heartbeat: Some(30)
            }
        );
    }

    #[test]
    fn bad_frames_are_invalid_inits_with_3020() {
        let own = own();
        let policy = InitPolicy::Accept;
        for (frame, error) in [
            (Ok(&b"not json"[..]), "expected init: "),
            (Ok(&br#"{"method":"ping","id":1}"#[..]), "expected init: "),
            (
                Ok(&br#"{"method":"init","hostname":""}"#[..]),
                "expected init: ",
            ),
        ] {
            let v = answer_init(frame, &ctx(&policy, &own));
            let Verdict::Reject {
                host,
                retcode,
                message,
                cause,
            } = &v
            else {
                panic!("{v:?}")
            };
            assert_eq!(*host, None);
            assert_eq!(*retcode, Retcode::INVALID_REQUEST);
            assert!(message.starts_with(error), "{message}");
            assert!(matches!(cause, RejectCause::InvalidInit(e) if message.ends_with(e.as_str())));
            let reply = String::from_utf8(v.reply()).expect("utf-8");
            assert!(reply.contains("\"retcode\":3020"), "{reply}");
        }
        let too_long = FrameError::TooLong { limit: 64 };
        let v = answer_init(Err(&too_long), &ctx(&policy, &own));
        assert!(matches!(
            &v,
            Verdict::Reject { message, cause: RejectCause::InvalidInit(_), .. }
                if message == "expected init: init frame longer than 64 bytes"
        ));
    }

    #[test]
    fn mtls_binds_the_host_id_before_anything_else() {
        let own = own();
        let policy = InitPolicy::Redirect("127.0.0.9".into());
        let mut c = ctx(&policy, &own);
        c.full = Some(5);
        c.client_host = Some(Some("other"));
        let v = answer_init(Ok(INIT), &c);
        assert_eq!(
            v,
            Verdict::reject(
                "h-1",
                Retcode::PERMISSION_DENIED,
                "the client certificate is for host id \"other\", not \"h-1\"",
                RejectCause::Identity
            )
        );
        c.client_host = Some(None);
        assert!(matches!(
            answer_init(Ok(INIT), &c),
            Verdict::Reject { message, .. }
                if message == "the client certificate is for host id (none), not \"h-1\""
        ));
        // The right certificate: on to the limit (full, so the peers).
        c.client_host = Some(Some("h-1"));
        assert_eq!(
            answer_init(Ok(INIT), &c),
            Verdict::Redirect {
                host: "h-1".into(),
                list: "127.0.0.9".into(),
                cause: RedirectCause::Full
            }
        );
    }

    #[test]
    fn a_full_server_sends_agents_to_its_peers_or_refuses_busy() {
        let own = own();
        let spread = InitPolicy::Spread(strict_list("127.0.0.2,127.0.0.3", 8443).expect("list"));
        let mut c = ctx(&spread, &own);
        c.full = Some(7);
        assert!(matches!(
            answer_init(Ok(INIT), &c),
            Verdict::Redirect { list, cause: RedirectCause::Full, .. } if list == "127.0.0.3:8443"
        ));
        let only_self = InitPolicy::Spread(strict_list("127.0.0.2", 8443).expect("list"));
        let mut c = ctx(&only_self, &own);
        c.full = Some(7);
        let v = answer_init(Ok(INIT), &c);
        assert_eq!(
            v,
            Verdict::reject(
                "h-1",
                Retcode::BUSY,
                "server busy: it holds its limit of 7 agent sessions; retry later",
                RejectCause::Full
            )
        );
        assert!(String::from_utf8_lossy(&v.reply()).contains("\"retcode\":3026"));
        let mut c = ctx(&InitPolicy::Accept, &own);
        c.full = Some(1);
        assert!(matches!(
            answer_init(Ok(INIT), &c),
            Verdict::Reject {
                cause: RejectCause::Full,
                ..
            }
        ));
    }

    #[test]
    fn the_policy_redirects_and_rejects() {
        let own = own();
        let redirect = InitPolicy::Redirect("a.example:1, b.example".into());
        let v = answer_init(Ok(INIT), &ctx(&redirect, &own));
        assert_eq!(
            v,
            Verdict::Redirect {
                host: "h-1".into(),
                list: "a.example:1, b.example".into(),
                cause: RedirectCause::Policy
            }
        );
        let reply = v.reply();
        assert_eq!(
            String::from_utf8_lossy(&reply),
            format!("{}\n", redirect_json("a.example:1, b.example"))
        );
        let reject = InitPolicy::Reject("not welcome".into());
        let v = answer_init(Ok(INIT), &ctx(&reject, &own));
        assert_eq!(
            v,
            Verdict::reject(
                "h-1",
                Retcode::PERMISSION_DENIED,
                "not welcome",
                RejectCause::Policy
            )
        );
        assert!(String::from_utf8_lossy(&v.reply()).contains("\"retcode\":3027"));
    }

    #[test]
    fn peers_of_each_policy() {
        let own = own();
        assert_eq!(InitPolicy::Accept.peers(&own), None);
        assert_eq!(InitPolicy::Reject("x".into()).peers(&own), None);
        assert_eq!(
            InitPolicy::Redirect("x:1".into()).peers(&own),
            Some("x:1".into())
        );
        let spread = InitPolicy::Spread(
            strict_list("127.0.0.2,name.example:9,127.0.0.4", 8443).expect("list"),
        );
        assert_eq!(
            spread.peers(&own),
            Some("name.example:9,127.0.0.4:8443".into())
        );
    }
}

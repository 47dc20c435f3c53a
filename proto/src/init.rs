//! Init and its answers (protocol §4): the agent's `init`, the server's success, rejection or redirect.
//!
//! Both sides live here: the agent encodes [`Init`] and decodes
//! [`InitReply`]; the server decodes [`Init`] and encodes [`InitReply`] (or
//! a verbatim list with [`redirect_json`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::envelope::{self, MessageError};
use crate::retcode::Retcode;
use crate::server_list::{parse_server_list, ServerAddr, ServerAddrError};

/// The agent's first message after the TLS handshake.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Init {
    /// The stable host id (a UUID). Required, non-empty.
    pub hostname: String,
    /// Agent version; empty when the peer did not send it.
    pub version: String,
    /// The kernel's node name; empty when not sent.
    pub name: String,
    /// Methods served by plugins, e.g. `getinfo.kernel`.
    pub plugins: Vec<String>,
    /// Fields this version does not know: kept when decoding, written after
    /// the known fields when encoding (a key that clashes with a known one
    /// is not written).
    pub extra: Map<String, Value>,
}

#[derive(Serialize)]
struct InitWire<'a> {
    method: &'static str,
    hostname: &'a str,
    version: &'a str,
    name: &'a str,
    plugins: &'a [String],
    #[serde(flatten)]
    extra: Map<String, Value>,
}

const INIT_KEYS: [&str; 5] = ["method", "hostname", "version", "name", "plugins"];

impl Init {
    /// The init message as one JSON object, without `\n`.
    pub fn to_json(&self) -> String {
        let extra = self
            .extra
            .iter()
            .filter(|(k, _)| !INIT_KEYS.contains(&k.as_str()));
        let wire = InitWire {
            method: "init",
            hostname: &self.hostname,
            version: &self.version,
            name: &self.name,
            plugins: &self.plugins,
            extra: extra.map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| String::from("{}"))
    }

    /// Appends the message and its `\n` to `out`.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_json().as_bytes());
        out.push(b'\n');
    }

    /// Decodes an init frame (server side). `method` must be `"init"` and
    /// `hostname` a non-empty string; `version`, `name` and `plugins` may be
    /// missing (empty) but not of another type; other fields go to `extra`.
    pub fn parse(frame: &[u8]) -> Result<Init, MessageError> {
        let mut obj: Map<String, Value> = envelope::object(frame)?;
        match obj.remove("method") {
            Some(Value::String(m)) if m == "init" => {}
            Some(Value::String(m)) => {
                return Err(MessageError::WrongMethod {
                    expected: "init",
                    got: Some(m),
                })
            }
            _ => {
                return Err(MessageError::WrongMethod {
                    expected: "init",
                    got: None,
                })
            }
        }
        let hostname = match obj.remove("hostname") {
            Some(Value::String(h)) if !h.trim().is_empty() => h,
            _ => return Err(MessageError::BadField("hostname")),
        };
        let mut text = |key: &'static str| match obj.remove(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(MessageError::BadField(key)),
        };
        let version = text("version")?;
        let name = text("name")?;
        let plugins = match obj.remove("plugins") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(MessageError::BadField("plugins")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(MessageError::BadField("plugins")),
        };
        Ok(Init {
            hostname,
            version,
            name,
            plugins,
            extra: obj,
        })
    }
}

/// The server's answer to init, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitReply {
    /// Go to these servers instead (in order), TLS still verified against
    /// the configured server name.
    Redirect(Vec<ServerAddr>),
    /// The session is up. `heartbeat` is the server's wish in seconds;
    /// `None` (absent, `null` or `0`) means the agent's own setting.
    Accepted { heartbeat: Option<u64> },
    /// Refused; the agent logs `message` and backs off.
    Rejected { retcode: Retcode, message: String },
}

#[derive(Deserialize)]
struct ReplyEnvelope<'a> {
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    server: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    retcode: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    heartbeat: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ReplyWire<'a> {
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resp: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retcode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat: Option<u64>,
}

/// `{"method":"redirect","server":LIST}` with `list` written verbatim (the
/// server keeps the operator's text; entries without a port then take the
/// agent's configured port).
pub fn redirect_json(list: &str) -> String {
    let wire = ReplyWire {
        method: "redirect",
        server: Some(list),
        resp: None,
        retcode: None,
        message: None,
        heartbeat: None,
    };
    serde_json::to_string(&wire).unwrap_or_else(|_| String::from("{}"))
}

impl InitReply {
    /// A rejection with the code's standard message.
    pub fn rejected(retcode: Retcode, message: impl Into<String>) -> Self {
        InitReply::Rejected {
            retcode,
            message: message.into(),
        }
    }

    /// The reply as one JSON object, without `\n`. A redirect writes every
    /// address with its port.
    pub fn to_json(&self) -> String {
        let wire = match self {
            InitReply::Redirect(addrs) => {
                let list = addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                return redirect_json(&list);
            }
            InitReply::Accepted { heartbeat } => ReplyWire {
                method: "init",
                server: None,
                resp: Some(Retcode::SUCCESS.resp()),
                retcode: Some(Retcode::SUCCESS.0),
                message: Some(Retcode::SUCCESS.message()),
                heartbeat: heartbeat.filter(|&h| h > 0),
            },
            InitReply::Rejected { retcode, message } => ReplyWire {
                method: "init",
                server: None,
                resp: Some("failed"),
                retcode: Some(retcode.0),
                message: Some(message),
                heartbeat: None,
            },
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| String::from("{}"))
    }

    /// Appends the reply and its `\n` to `out`.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_json().as_bytes());
        out.push(b'\n');
    }

    /// Decodes the server's answer (agent side); see
    /// [`InitReply::parse_with_warnings`]. Invalid redirect entries are dropped.
    pub fn parse(frame: &[u8], default_port: u16) -> Result<InitReply, MessageError> {
        InitReply::parse_with_warnings(frame, default_port).map(|(reply, _)| reply)
    }

    /// Decodes the server's answer and also returns the redirect entries
    /// that were skipped as invalid (for the agent's log).
    ///
    /// * `"method":"redirect"` → `Redirect`; `server` must be a string with
    ///   at least one valid entry, else [`MessageError::EmptyRedirect`].
    /// * `"method":"init"` (or no method) with `"resp":"success"` →
    ///   `Accepted`; with `"resp":"failed"` → `Rejected` (`retcode`
    ///   required, `message` defaults to the code's standard message).
    /// * anything else → [`MessageError::WrongMethod`].
    pub fn parse_with_warnings(
        frame: &[u8],
        default_port: u16,
    ) -> Result<(InitReply, Vec<ServerAddrError>), MessageError> {
        let env: ReplyEnvelope<'_> = envelope::object(frame)?;
        let method = envelope::opt_string(env.method, "method")?;
        match method.as_deref() {
            Some("redirect") => {
                let list = envelope::string(env.server, "server")?;
                let parsed = parse_server_list(&list, default_port);
                if parsed.addrs.is_empty() {
                    return Err(MessageError::EmptyRedirect {
                        errors: parsed.errors,
                    });
                }
                Ok((InitReply::Redirect(parsed.addrs), parsed.errors))
            }
            Some("init") | None if envelope::present(env.resp).is_some() => {
                let resp = envelope::string(env.resp, "resp")?;
                let retcode = envelope::opt_u32(env.retcode, "retcode")?;
                let reply = match resp.as_str() {
                    "success" => {
                        let heartbeat =
                            envelope::opt_u64(env.heartbeat, "heartbeat")?.filter(|&h| h > 0);
                        InitReply::Accepted { heartbeat }
                    }
                    "failed" => {
                        let retcode = Retcode(retcode.ok_or(MessageError::BadField("retcode"))?);
                        let message = envelope::opt_string(env.message, "message")?
                            .unwrap_or_else(|| retcode.message().to_owned());
                        InitReply::Rejected { retcode, message }
                    }
                    _ => return Err(MessageError::BadField("resp")),
                };
                Ok((reply, Vec::new()))
            }
            _ => Err(MessageError::WrongMethod {
                expected: "init or redirect",
                got: method,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Init {
        Init {
            hostname: "edd6c192-52cb-4133-a17a-e7d8aec03de7".into(),
            version: "0.1.0".into(),
            name: "web-01".into(),
            plugins: vec!["getinfo.kernel".into(), "sync.bash".into()],
            extra: Map::new(),
        }
    }

    #[test]
    fn init_round_trip_and_exact_wire() {
        let i = sample();
        assert_eq!(
            i.to_json(),
            r#"{"method":"init","hostname":"edd6c192-52cb-4133-a17a-e7d8aec03de7","version":"0.1.0","name":"web-01","plugins":["getinfo.kernel","sync.bash"]}"#
        );
        assert_eq!(Init::parse(i.to_json().as_bytes()).unwrap(), i);
    }

    #[test]
    fn init_tolerates_extra_and_missing_optional_fields() {
        let i = Init::parse(br#"{"method":"init","hostname":"h1","arch":"x86_64","method2":1}"#)
            .unwrap();
        assert_eq!(i.hostname, "h1");
        assert_eq!(i.version, "");
        assert!(i.plugins.is_empty());
        assert_eq!(i.extra.get("arch"), Some(&Value::String("x86_64".into())));
        let mut j = i.clone();
        j.extra.insert("hostname".into(), Value::Bool(true));
        let back = Init::parse(j.to_json().as_bytes()).unwrap();
        assert_eq!(back.hostname, "h1");
    }

    #[test]
    fn init_refusals() {
        assert!(matches!(Init::parse(b"[]"), Err(MessageError::NotJson(_))));
        assert!(matches!(
            Init::parse(br#"{"method":"ping","hostname":"h"}"#),
            Err(MessageError::WrongMethod { .. })
        ));
        assert_eq!(
            Init::parse(br#"{"method":"init"}"#),
            Err(MessageError::BadField("hostname"))
        );
        assert_eq!(
            Init::parse(br#"{"method":"init","hostname":""}"#),
            Err(MessageError::BadField("hostname"))
        );
        assert_eq!(
            Init::parse(br#"{"method":"init","hostname":"h","plugins":[1]}"#),
            Err(MessageError::BadField("plugins"))
        );
        assert_eq!(
            Init::parse(br#"{"method":"init","hostname":"h","name":3}"#),
            Err(MessageError::BadField("name"))
        );
    }

    #[test]
    fn replies_encode_as_the_protocol_says() {
        assert_eq!(
            InitReply::Accepted { heartbeat: None }.to_json(),
            r#"{"method":"init","resp":"success","retcode":2,"message":"Normal termination"}"#
        );
        assert_eq!(
            InitReply::Accepted { heartbeat: Some(5) }.to_json(),
            r#"{"method":"init","resp":"success","retcode":2,"message":"Normal termination","heartbeat":5}"#
        );
        assert_eq!(
            InitReply::rejected(Retcode::PERMISSION_DENIED, "go away").to_json(),
            r#"{"method":"init","resp":"failed","retcode":3027,"message":"go away"}"#
        );
        assert_eq!(
            redirect_json("127.0.10.1,10.92.1.130"),
            r#"{"method":"redirect","server":"127.0.10.1,10.92.1.130"}"#
        );
    }

    #[test]
    fn replies_decode_round_trip() {
        for reply in [
            InitReply::Accepted { heartbeat: None },
            InitReply::Accepted {
                heartbeat: Some(30),
            },
            InitReply::rejected(Retcode(3026), "busy"),
            InitReply::Redirect(vec![
                ServerAddr::Ip("127.0.0.3:9000".parse().unwrap()),
                ServerAddr::Name {
                    host: "b.example".into(),
                    port: 1,
                },
            ]),
        ] {
            assert_eq!(
                InitReply::parse(reply.to_json().as_bytes(), 8443).unwrap(),
                reply
            );
        }
    }

    #[test]
    fn redirect_decoding_skips_bad_entries() {
        let (reply, warnings) = InitReply::parse_with_warnings(
            br#"{"method":"redirect","server":"127.0.10.1, bad:port ,x"}"#,
            8443,
        )
        .unwrap();
        assert_eq!(
            reply,
            InitReply::Redirect(vec![
                ServerAddr::Ip("127.0.10.1:8443".parse().unwrap()),
                ServerAddr::Name {
                    host: "x".into(),
                    port: 8443
                }
            ])
        );
        assert_eq!(warnings.len(), 1);
        assert!(matches!(
            InitReply::parse(br#"{"method":"redirect","server":" , :0"}"#, 1),
            Err(MessageError::EmptyRedirect { .. })
        ));
        assert_eq!(
            InitReply::parse(br#"{"method":"redirect"}"#, 1),
            Err(MessageError::BadField("server"))
        );
    }

    #[test]
    fn reply_refusals() {
        assert!(matches!(
            InitReply::parse(br#"{"id":1,"method":"ping"}"#, 1),
            Err(MessageError::WrongMethod { .. })
        ));
        assert_eq!(
            InitReply::parse(br#"{"method":"init","resp":"failed"}"#, 1),
            Err(MessageError::BadField("retcode"))
        );
        assert_eq!(
            InitReply::parse(br#"{"method":"init","resp":"failed","retcode":3020}"#, 1),
            Ok(InitReply::rejected(Retcode(3020), "Invalid request"))
        );
        assert_eq!(
            InitReply::parse(br#"{"method":"init","resp":"maybe"}"#, 1),
            Err(MessageError::BadField("resp"))
        );
        assert_eq!(
            InitReply::parse(br#"{"method":"init","resp":"success","heartbeat":-1}"#, 1),
            Err(MessageError::BadField("heartbeat"))
        );
    }
}

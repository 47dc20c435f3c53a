//! The request and its `args` string: JSON object check, shell-like
//! splitting (whitespace, simple quotes) and getopts parsing into one
//! [`Selection`].

use serde::Deserialize;
use serde_json::value::RawValue;

/// Which sockets a call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// Report TCP sockets (false only with `-u` alone).
    pub tcp: bool,
    /// Report UDP sockets (false only with `-t` alone).
    pub udp: bool,
    /// `-l`: listening only (TCP LISTEN, UDP unconnected).
    pub listening_only: bool,
    /// `-a`: TCP sockets in every state, not only LISTEN and ESTABLISHED.
    pub all_states: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            tcp: true,
            udp: true,
            listening_only: false,
            all_states: false,
        }
    }
}

/// Why a request's `args` are refused (retcode 3021).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// `args` is present but not a string (nor null).
    #[error("\"args\" must be a string, got {0}")]
    NotString(String),
    /// A `'` or `"` without its closing partner.
    #[error("unterminated {0} quote in args")]
    UnterminatedQuote(char),
    /// getopts refused the options (unknown flag, missing or repeated value).
    #[error("{0}")]
    Getopts(String),
    /// A word that is not an option.
    #[error("unexpected operand {0:?}")]
    Operand(String),
    /// `-l` and `-a` together.
    #[error("-l (listening only) and -a (every state) conflict")]
    Conflict,
}

/// Why a request is not even looked at (retcode 3020).
#[derive(Debug, thiserror::Error)]
#[error("request is not a JSON object: {0}")]
pub struct RequestError(#[source] pub serde_json::Error);

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

/// The `args` string of a request (`None`: absent or null). An empty
/// request is treated as `{}`.
pub fn request_args(request: &[u8]) -> Result<Result<Option<String>, ArgsError>, RequestError> {
    match request.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(Ok(None)),
        // serde would also accept a struct written as an array.
        Some(b'{') => {}
        Some(_) => return Err(RequestError(serde::de::Error::custom("expected an object"))),
    }
    let req: Request<'_> = serde_json::from_slice(request).map_err(RequestError)?;
    let Some(raw) = req.args else {
        return Ok(Ok(None));
    };
    Ok(serde_json::from_str::<Option<String>>(raw.get())
        .map_err(|_| ArgsError::NotString(raw.get().to_owned())))
}

/// Splits `args` into words: whitespace separates; `'...'` is literal;
/// in `"..."` only `\"` and `\\` are escapes; outside quotes `\` makes
/// the next character literal. Adjacent pieces join; `''` is an empty word.
pub fn split_words(args: &str) -> Result<Vec<String>, ArgsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(ArgsError::UnterminatedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => word.push(e),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err(ArgsError::UnterminatedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(ArgsError::UnterminatedQuote('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().unwrap_or('\\'));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses an `args` string (blank: TCP LISTEN and ESTABLISHED, all UDP).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    let words = split_words(args)?;
    let mut opts = getopts::Options::new();
    opts.optflagmulti("l", "", "listening only");
    opts.optflagmulti("t", "", "TCP");
    opts.optflagmulti("u", "", "UDP");
    opts.optflagmulti("a", "", "every TCP state");
    let m = opts
        .parse(&words)
        .map_err(|e| ArgsError::Getopts(e.to_string()))?;
    if let Some(operand) = m.free.first() {
        return Err(ArgsError::Operand(operand.clone()));
    }
    let (t, u) = (m.opt_present("t"), m.opt_present("u"));
    let sel = Selection {
        tcp: t || !u,
        udp: u || !t,
        listening_only: m.opt_present("l"),
        all_states: m.opt_present("a"),
    };
    if sel.listening_only && sel.all_states {
        return Err(ArgsError::Conflict);
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_and_quotes() {
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("  -G   root \t").unwrap(), ["-G", "root"]);
        assert_eq!(split_words("-G 'a b'").unwrap(), ["-G", "a b"]);
        assert_eq!(split_words(r#"-G "a \"b\"""#).unwrap(), ["-G", r#"a "b""#]);
        assert_eq!(split_words("-G''").unwrap(), ["-G"]);
        assert_eq!(split_words("-G ''").unwrap(), ["-G", ""]);
        assert_eq!(split_words(r"a\ b").unwrap(), ["a b"]);
        assert_eq!(split_words("'x"), Err(ArgsError::UnterminatedQuote('\'')));
        assert_eq!(split_words("\"x\\"), Err(ArgsError::UnterminatedQuote('"')));
    }

    #[test]
    fn selections() {
        let d = Selection::default();
        assert_eq!(parse_args(""), Ok(d));
        assert_eq!(parse_args("-t -u"), Ok(d));
        assert_eq!(parse_args("-t"), Ok(Selection { udp: false, ..d }));
        assert_eq!(parse_args("-u"), Ok(Selection { tcp: false, ..d }));
        assert_eq!(
            parse_args("-lt"),
            Ok(Selection {
                udp: false,
                listening_only: true,
                ..d
            })
        );
        assert_eq!(
            parse_args("-a -a"),
            Ok(Selection {
                all_states: true,
                ..d
            })
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(parse_args("-x"), Err(ArgsError::Getopts(_))));
        assert!(matches!(parse_args("--listen"), Err(ArgsError::Getopts(_))));
        assert_eq!(parse_args("-l -a"), Err(ArgsError::Conflict));
        assert_eq!(parse_args("tcp"), Err(ArgsError::Operand("tcp".into())));
        assert_eq!(parse_args("-l 'x"), Err(ArgsError::UnterminatedQuote('\'')));
    }

    #[test]
    fn requests() {
        assert_eq!(request_args(b"").unwrap(), Ok(None));
        assert_eq!(request_args(br#"{"method":"m"}"#).unwrap(), Ok(None));
        assert_eq!(request_args(br#"{"args":null}"#).unwrap(), Ok(None));
        assert_eq!(
            request_args(br#"{"args":"-G x"}"#).unwrap(),
            Ok(Some("-G x".into()))
        );
        assert!(matches!(
            request_args(br#"{"args":1}"#).unwrap(),
            Err(ArgsError::NotString(_))
        ));
        assert!(request_args(b"[1]").is_err());
        assert!(request_args(b"\"x\"").is_err());
        assert!(request_args(b"{").is_err());
    }
}

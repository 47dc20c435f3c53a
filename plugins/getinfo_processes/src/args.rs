//! The request and its `args` string: JSON object check, shell-like
//! splitting (whitespace, simple quotes) and getopts parsing into one
//! [`Selection`].

use serde::Deserialize;
use serde_json::value::RawValue;

/// The order of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// `-s pid` (the default): ascending pid.
    #[default]
    Pid,
    /// `-s rss`: largest resident set first.
    Rss,
    /// `-s cpu`: most CPU time first.
    Cpu,
}

/// What a call reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// `-p PID`: only this process.
    pub pid: Option<u32>,
    /// `-U USER`: only processes of this user (name or uid).
    pub user: Option<String>,
    /// `-s rss|cpu|pid`.
    pub sort: Sort,
    /// `-n N`: at most N processes (after sorting).
    pub limit: Option<usize>,
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
    /// `-U ''`, or a name no account can have.
    #[error("invalid user {0:?}")]
    BadName(String),
    /// An option's value is out of range or not a number.
    #[error("invalid value {1:?} for {0}")]
    BadValue(&'static str, String),
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

/// Parses an `args` string (blank: every process, by pid).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    let words = split_words(args)?;
    let mut opts = getopts::Options::new();
    opts.optopt("p", "", "one process", "PID");
    opts.optopt("U", "", "one user's processes", "USER");
    opts.optopt("s", "", "sort", "rss|cpu|pid");
    opts.optopt("n", "", "limit", "N");
    let m = opts
        .parse(&words)
        .map_err(|e| ArgsError::Getopts(e.to_string()))?;
    if let Some(operand) = m.free.first() {
        return Err(ArgsError::Operand(operand.clone()));
    }
    let pid = match m.opt_str("p") {
        None => None,
        Some(p) => match p.parse::<u32>() {
            Ok(pid) if pid > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(pid),
            _ => return Err(ArgsError::BadValue("-p", p)),
        },
    };
    let user = m.opt_str("U");
    if let Some(u) = &user {
        if u.is_empty() || u.contains([':', '\n', '\0']) {
            return Err(ArgsError::BadName(u.clone()));
        }
    }
    let sort = match m.opt_str("s").as_deref() {
        None | Some("pid") => Sort::Pid,
        Some("rss") => Sort::Rss,
        Some("cpu") => Sort::Cpu,
        Some(other) => return Err(ArgsError::BadValue("-s", other.to_owned())),
    };
    let limit = match m.opt_str("n") {
        None => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(ArgsError::BadValue("-n", n)),
        },
    };
    Ok(Selection {
        pid,
        user,
        sort,
        limit,
    })
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
        assert_eq!(parse_args(""), Ok(Selection::default()));
        assert_eq!(
            parse_args("-p 42 -U root -s rss -n 5"),
            Ok(Selection {
                pid: Some(42),
                user: Some("root".into()),
                sort: Sort::Rss,
                limit: Some(5)
            })
        );
        assert_eq!(parse_args("-s cpu").map(|s| s.sort), Ok(Sort::Cpu));
        assert_eq!(parse_args("-s pid").map(|s| s.sort), Ok(Sort::Pid));
        assert_eq!(parse_args("-U 0").map(|s| s.user), Ok(Some("0".into())));
    }

    #[test]
    fn errors() {
        assert!(matches!(parse_args("-x"), Err(ArgsError::Getopts(_))));
        assert!(matches!(parse_args("-p"), Err(ArgsError::Getopts(_))));
        assert!(matches!(
            parse_args("-p 1 -p 2"),
            Err(ArgsError::Getopts(_))
        ));
        for (args, flag, value) in [
            ("-p 0", "-p", "0"),
            ("-p -3", "-p", "-3"),
            ("-p +3", "-p", "+3"),
            ("-p x", "-p", "x"),
            ("-p 99999999999", "-p", "99999999999"),
            ("-s mem", "-s", "mem"),
            ("-n 0", "-n", "0"),
            ("-n ten", "-n", "ten"),
        ] {
            assert_eq!(
                parse_args(args),
                Err(ArgsError::BadValue(flag, value.into())),
                "{args}"
            );
        }
        assert_eq!(parse_args("1"), Err(ArgsError::Operand("1".into())));
        assert_eq!(parse_args("-U ''"), Err(ArgsError::BadName(String::new())));
        assert_eq!(parse_args("-U 'x"), Err(ArgsError::UnterminatedQuote('\'')));
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

//! The request and its `args` string: JSON object check, shell-like
//! splitting (whitespace, simple quotes) and getopts parsing into one
//! [`Selection`].

use serde::Deserialize;
use serde_json::value::RawValue;

/// What a call reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// `-n NAME`: only the package NAME (every architecture) or NAME:ARCH.
    pub name: Option<String>,
    /// `-c`: the count only, no list.
    pub count_only: bool,
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
    /// `-n ''`, or a name no package can have.
    #[error("invalid package name {0:?}")]
    BadName(String),
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

/// Parses an `args` string (blank: every installed package).
pub fn parse_args(args: &str) -> Result<Selection, ArgsError> {
    let words = split_words(args)?;
    let mut opts = getopts::Options::new();
    opts.optopt("n", "", "one package", "NAME");
    opts.optflagmulti("c", "", "count only");
    let m = opts
        .parse(&words)
        .map_err(|e| ArgsError::Getopts(e.to_string()))?;
    if let Some(operand) = m.free.first() {
        return Err(ArgsError::Operand(operand.clone()));
    }
    let name = m.opt_str("n");
    if let Some(name) = &name {
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(ArgsError::BadName(name.clone()));
        }
    }
    Ok(Selection {
        name,
        count_only: m.opt_present("c"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_and_quotes() {
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("  -n   bash \t").unwrap(), ["-n", "bash"]);
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
        let one = |n: &str, c| Selection {
            name: Some(n.into()),
            count_only: c,
        };
        assert_eq!(parse_args("-n bash"), Ok(one("bash", false)));
        assert_eq!(parse_args("-nlibc6:amd64 -c"), Ok(one("libc6:amd64", true)));
        assert_eq!(
            parse_args("-c -c"),
            Ok(Selection {
                name: None,
                count_only: true
            })
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(parse_args("-x"), Err(ArgsError::Getopts(_))));
        assert!(matches!(parse_args("-n"), Err(ArgsError::Getopts(_))));
        assert!(matches!(
            parse_args("-n a -n b"),
            Err(ArgsError::Getopts(_))
        ));
        assert_eq!(parse_args("bash"), Err(ArgsError::Operand("bash".into())));
        assert_eq!(parse_args("-n ''"), Err(ArgsError::BadName(String::new())));
        assert_eq!(
            parse_args("-n 'a b'"),
            Err(ArgsError::BadName("a b".into()))
        );
        assert_eq!(parse_args("-n 'x"), Err(ArgsError::UnterminatedQuote('\'')));
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

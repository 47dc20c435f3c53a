//! The request: a JSON object whose optional `"args"` string is split into
//! words with shell-like quoting, ready for getopts. (Each collector keeps
//! its own copy of this small module: plugins are standalone.)

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a request or its `args` is refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request bytes are not a JSON object (3020).
    #[error("request is not a JSON object: {0}")]
    NotObject(#[source] serde_json::Error),
    /// `args` is neither a string nor null (3021).
    #[error("\"args\" must be a string, got {0}")]
    ArgsNotString(String),
    /// A `'` or `"` without its closing partner (3021).
    #[error("unterminated {0} quote in args")]
    UnterminatedQuote(char),
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

/// The words of the request's `args` (absent, null or blank: none).
pub fn args_words(request: &[u8]) -> Result<Vec<String>, RequestError> {
    match request.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(Vec::new()),
        // serde would also accept a struct written as an array.
        Some(b'{') => {}
        Some(_) => {
            return Err(RequestError::NotObject(serde::de::Error::custom(
                "expected an object",
            )))
        }
    }
    let req: Request<'_> = serde_json::from_slice(request).map_err(RequestError::NotObject)?;
    let Some(raw) = req.args else {
        return Ok(Vec::new());
    };
    match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(args)) => split_words(&args),
        Err(_) => Err(RequestError::ArgsNotString(raw.get().to_owned())),
    }
}

/// Splits `args` into words: whitespace separates; `'...'` is literal;
/// in `"..."` only `\"` and `\\` are escapes; outside quotes `\` makes the
/// next character literal; adjacent pieces join; `''` is an empty word.
pub fn split_words(args: &str) -> Result<Vec<String>, RequestError> {
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
                        None => return Err(RequestError::UnterminatedQuote('\'')),
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
                            None => return Err(RequestError::UnterminatedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(RequestError::UnterminatedQuote('"')),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(w(""), Vec::<String>::new());
        assert_eq!(w("  -x   'a b' \t"), ["-x", "a b"]);
        assert_eq!(w(r#""a \"b\" \\ \c""#), [r#"a "b" \ \c"#]);
        assert_eq!(w(r"a\ b"), ["a b"]);
        assert_eq!(w("-m''"), ["-m"]);
        assert!(matches!(
            split_words("'x"),
            Err(RequestError::UnterminatedQuote('\''))
        ));
        assert!(matches!(
            split_words("\"x"),
            Err(RequestError::UnterminatedQuote('"'))
        ));
    }

    #[test]
    fn requests() {
        assert!(args_words(b"").unwrap().is_empty());
        assert!(args_words(br#"{"method":"m"}"#).unwrap().is_empty());
        assert!(args_words(br#"{"args":null}"#).unwrap().is_empty());
        assert!(args_words(br#"{"args":"  "}"#).unwrap().is_empty());
        assert_eq!(
            args_words(br#"{"args":"-a 'b c'"}"#).unwrap(),
            ["-a", "b c"]
        );
        assert!(matches!(
            args_words(b"[1]"),
            Err(RequestError::NotObject(_))
        ));
        assert!(matches!(args_words(b"{"), Err(RequestError::NotObject(_))));
        assert!(matches!(args_words(b"7"), Err(RequestError::NotObject(_))));
        assert!(matches!(
            args_words(br#"{"args":1}"#),
            Err(RequestError::ArgsNotString(_))
        ));
        assert!(matches!(
            args_words(br#"{"args":["-a"]}"#),
            Err(RequestError::ArgsNotString(_))
        ));
    }
}

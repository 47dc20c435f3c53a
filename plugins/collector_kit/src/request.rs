//! The request envelope: a JSON object whose optional `"args"` string
//! holds the options, and the [`Refusal`] a plugin answers when the
//! request or its `args` is refused (`3020` or `3021`).

use std::error::Error;

use basicagent_abi::{retcode, Call};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::args::{split_args, ArgsError};

/// Why [`request_args`] refuses a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request bytes are not a JSON object (`3020`).
    #[error("request is not a JSON object: {0}")]
    NotObject(#[source] serde_json::Error),
    /// `args` is not a string, or does not split (`3021`).
    #[error(transparent)]
    Args(#[from] ArgsError),
}

impl RequestError {
    /// The protocol retcode: `3020` or `3021`.
    pub fn retcode(&self) -> u32 {
        match self {
            RequestError::NotObject(_) => retcode::INVALID_REQUEST,
            RequestError::Args(_) => retcode::INVALID_PARAMS,
        }
    }

    /// The answer, with the plugin's usage for a `3021`.
    pub fn with_usage(self, usage: &'static str) -> Refusal {
        match self {
            RequestError::NotObject(e) => Refusal::NotObject(e),
            RequestError::Args(e) => Refusal::invalid_params(e, usage),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

/// The words of the request's `args` (absent, `null` or blank: none).
/// Other fields are ignored; empty request bytes count as `{}`.
pub fn request_args(request: &[u8]) -> Result<Vec<String>, RequestError> {
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
    let envelope: Envelope<'_> =
        serde_json::from_slice(request).map_err(RequestError::NotObject)?;
    let Some(raw) = envelope.args else {
        return Ok(Vec::new());
    };
    match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(args)) => Ok(split_args(&args)?),
        Err(_) => Err(ArgsError::NotString(raw.get().to_owned()).into()),
    }
}

/// A request refused before any work, as the plugin answers it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `3020`: the request bytes are not a JSON object.
    #[error("request is not a JSON object: {0}")]
    NotObject(#[source] serde_json::Error),
    /// `3021`: the `args` are refused; the message ends with the usage.
    #[error("{reason}; usage: {usage}")]
    InvalidParams {
        /// Which argument, and what is wrong with it.
        reason: Box<dyn Error + Send + Sync>,
        /// The plugin's usage text.
        usage: &'static str,
    },
}

impl Refusal {
    /// A `3021` for a reason the plugin found itself (a value out of
    /// range, conflicting options); a `String` will do.
    pub fn invalid_params(
        reason: impl Into<Box<dyn Error + Send + Sync>>,
        usage: &'static str,
    ) -> Refusal {
        Refusal::InvalidParams {
            reason: reason.into(),
            usage,
        }
    }

    /// The protocol retcode: `3020` or `3021`.
    pub fn retcode(&self) -> u32 {
        match self {
            Refusal::NotObject(_) => retcode::INVALID_REQUEST,
            Refusal::InvalidParams { .. } => retcode::INVALID_PARAMS,
        }
    }

    /// Completes `call` with this refusal.
    pub fn fail(self, call: Call) {
        call.fail(self.retcode(), &self.to_string());
    }
}

/// Reads the request's `args` and hands the words to the plugin's
/// `parse` (typically [`parse_opts`](crate::parse_opts) and the checks of
/// the values). Whatever `parse` refuses is answered `3021` with `usage`.
pub fn parse_request<T, E>(
    request: &[u8],
    usage: &'static str,
    parse: impl FnOnce(&[String]) -> Result<T, E>,
) -> Result<T, Refusal>
where
    E: Into<Box<dyn Error + Send + Sync>>,
{
    let words = request_args(request).map_err(|e| e.with_usage(usage))?;
    parse(&words).map_err(|e| Refusal::invalid_params(e, usage))
}

/// For a method that takes no arguments: `args` must be absent, `null`
/// or blank.
pub fn no_args(request: &[u8], usage: &'static str) -> Result<(), Refusal> {
    parse_request(request, usage, |words| match words {
        [] => Ok(()),
        words => Err(format!("unexpected args {words:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = "args: [-a] [-n N]";

    fn words(request: &[u8]) -> Result<Vec<String>, RequestError> {
        request_args(request)
    }

    #[test]
    fn absent_null_or_blank_args_give_no_words() {
        for request in [
            &b""[..],
            b" \n",
            b"{}",
            br#"{"method":"getinfo.x"}"#,
            br#"{"method":"getinfo.x","args":null}"#,
            br#"{"args":""}"#,
            br#"{"args":" \t "}"#,
            br#"{"id":7,"method":"m","other":{"x":[1]}}"#,
        ] {
            assert!(
                words(request).unwrap().is_empty(),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn args_are_split() {
        assert_eq!(
            words(br#"{"method":"m","args":"-a 'b c' \"d\\\"e\""}"#).unwrap(),
            ["-a", "b c", "d\"e"]
        );
    }

    #[test]
    fn a_request_that_is_not_an_object_is_3020() {
        for request in [
            &b"[1]"[..],
            b"[]",
            b"7",
            b"\"x\"",
            b"null",
            b"{",
            b"not json",
            br#"{"args":"x"} trailing"#,
        ] {
            let e = words(request).unwrap_err();
            assert!(
                matches!(e, RequestError::NotObject(_)),
                "{}",
                String::from_utf8_lossy(request)
            );
            assert_eq!(e.retcode(), retcode::INVALID_REQUEST);
            let r = e.with_usage(USAGE);
            assert_eq!(r.retcode(), retcode::INVALID_REQUEST);
            let text = r.to_string();
            assert!(text.starts_with("request is not a JSON object: "), "{text}");
            assert!(!text.contains("usage"), "{text}");
        }
    }

    #[test]
    fn args_that_are_not_a_string_are_3021() {
        for (request, raw) in [
            (&br#"{"args":1}"#[..], "1"),
            (br#"{"args":["-a"]}"#, r#"["-a"]"#),
            (br#"{"args":{}}"#, "{}"),
            (br#"{"args":true}"#, "true"),
        ] {
            let e = words(request).unwrap_err();
            assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
            assert!(
                matches!(&e, RequestError::Args(ArgsError::NotString(r)) if r == raw),
                "{e:?}"
            );
            assert_eq!(
                e.with_usage(USAGE).to_string(),
                format!("\"args\" must be a string, got {raw}; usage: {USAGE}")
            );
        }
    }

    #[test]
    fn an_unterminated_quote_is_3021() {
        let e = words(br#"{"args":"-a 'x"}"#).unwrap_err();
        assert!(matches!(
            e,
            RequestError::Args(ArgsError::UnterminatedQuote('\''))
        ));
        assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
    }

    fn parse(request: &[u8]) -> Result<(bool, Option<u32>), Refusal> {
        parse_request(request, USAGE, |words| {
            let mut opts = getopts::Options::new();
            opts.optflagmulti("a", "", "all");
            opts.optopt("n", "", "limit", "N");
            let m = crate::parse_opts(&opts, words)?;
            let n = match m.opt_str("n") {
                None => None,
                Some(n) => Some(
                    n.parse()
                        .map_err(|_| format!("invalid value {n:?} for -n"))?,
                ),
            };
            Ok::<_, Box<dyn Error + Send + Sync>>((m.opt_present("a"), n))
        })
    }

    #[test]
    fn parse_request_gives_the_plugins_options() {
        assert_eq!(parse(b"{}").unwrap(), (false, None));
        assert_eq!(parse(br#"{"args":"-a -n 3"}"#).unwrap(), (true, Some(3)));
    }

    #[test]
    fn every_args_refusal_is_3021_with_the_usage() {
        for (args, reason) in [
            ("-x", "Unrecognized option: 'x'"),
            ("-n", "Argument to option 'n' missing"),
            ("-a stray", "unexpected operand \"stray\""),
            ("-a 'x", "unterminated ' quote in args"),
            ("-n ten", "invalid value \"ten\" for -n"),
        ] {
            let request = serde_json::json!({ "args": args }).to_string();
            let r = parse(request.as_bytes()).unwrap_err();
            assert_eq!(r.retcode(), retcode::INVALID_PARAMS, "{args}");
            assert_eq!(r.to_string(), format!("{reason}; usage: {USAGE}"), "{args}");
        }
        assert_eq!(
            parse(b"[]").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
    }

    #[test]
    fn no_args_accepts_only_nothing() {
        assert!(no_args(b"", USAGE).is_ok());
        assert!(no_args(br#"{"args":null}"#, USAGE).is_ok());
        assert!(no_args(br#"{"args":"  "}"#, USAGE).is_ok());
        let r = no_args(br#"{"args":"-h extra"}"#, USAGE).unwrap_err();
        assert_eq!(r.retcode(), retcode::INVALID_PARAMS);
        assert_eq!(
            r.to_string(),
            format!("unexpected args [\"-h\", \"extra\"]; usage: {USAGE}")
        );
        let r = no_args(br#"{"args":"''"}"#, USAGE).unwrap_err();
        assert_eq!(r.retcode(), retcode::INVALID_PARAMS);
        assert_eq!(
            no_args(br#"{"args":5}"#, USAGE).unwrap_err().retcode(),
            retcode::INVALID_PARAMS
        );
        assert_eq!(
            no_args(b"[1]", USAGE).unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
    }
}

//! Requests: a JSON object with a `method` and an optional `id`; the rest
//! are the method's parameters, passed to the plugin as the whole object.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A request whose envelope was read; `raw` is the whole frame (the JSON
/// object) as received, which is what a plugin gets.
#[derive(Debug)]
pub struct Request<'a> {
    pub id: Option<Box<RawValue>>,
    pub method: String,
    pub raw: &'a [u8],
}

/// Why a frame is not a request. Each maps to `3020 Invalid request`,
/// answered with the id when it could be read and `null` otherwise.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    #[error("request has no \"method\" string")]
    NoMethod,
    #[error("\"id\" must be a string or a number")]
    BadId,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<serde_json::Value>,
}

impl<'a> Request<'a> {
    /// Reads the envelope of one frame (without its `\n`). On failure also
    /// returns the id if one could be read, so the answer can carry it.
    pub fn parse(frame: &'a [u8]) -> Result<Request<'a>, (Option<Box<RawValue>>, RequestError)> {
        let text = std::str::from_utf8(frame).map_err(|_| (None, RequestError::NotJson("not UTF-8".into())))?;
        let value: &RawValue =
            serde_json::from_str(text).map_err(|e| (None, RequestError::NotJson(e.to_string())))?;
        if !value.get().trim_start().starts_with('{') {
            return Err((None, RequestError::NotJson("not an object".into())));
        }
        let env: Envelope<'_> =
            serde_json::from_str(value.get()).map_err(|e| (None, RequestError::NotJson(e.to_string())))?;
        let id = match env.id {
            None => None,
            Some(raw) if raw.get().trim() == "null" => None,
            Some(raw) => {
                let t = raw.get().trim_start();
                let ok = t.starts_with('"') || t.starts_with('-') || t.starts_with(|c: char| c.is_ascii_digit());
                if !ok {
                    return Err((None, RequestError::BadId));
                }
                Some(raw.to_owned())
            }
        };
        match env.method {
            Some(serde_json::Value::String(method)) => Ok(Request { id, method, raw: frame }),
            _ => Err((id, RequestError::NoMethod)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_id_and_method() {
        let r = Request::parse(br#"{"id":"42","method":"sync.bash","cmd":"ls"}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "\"42\"");
        assert_eq!(r.method, "sync.bash");
        let r = Request::parse(br#"{"id":7,"method":"ping"}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "7");
    }

    #[test]
    fn refuses_garbage_with_clear_errors() {
        assert!(matches!(Request::parse(b"hello").unwrap_err().1, RequestError::NotJson(_)));
        assert!(matches!(Request::parse(b"[1,2]").unwrap_err().1, RequestError::NotJson(_)));
        assert!(matches!(Request::parse(b"\xff").unwrap_err().1, RequestError::NotJson(_)));
        let (id, e) = Request::parse(br#"{"id":"9"}"#).unwrap_err();
        assert_eq!(e, RequestError::NoMethod);
        assert_eq!(id.unwrap().get(), "\"9\"");
        assert_eq!(Request::parse(br#"{"id":{},"method":"ping"}"#).unwrap_err().1, RequestError::BadId);
        assert_eq!(Request::parse(br#"{"method":5}"#).unwrap_err().1, RequestError::NoMethod);
    }
}

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
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
        let text = std::str::from_utf8(frame)
            .map_err(|_| (None, RequestError::NotJson("not UTF-8".into())))?;
        let value: &RawValue =
            serde_json::from_str(text).map_err(|e| (None, RequestError::NotJson(e.to_string())))?;
        if !value.get().trim_start().starts_with('{') {
            return Err((None, RequestError::NotJson("not an object".into())));
        }
        let env: Envelope<'_> = serde_json::from_str(value.get())
            .map_err(|e| (None, RequestError::NotJson(e.to_string())))?;
        let id = match env.id {
            None => None,
            Some(raw) if raw.get().trim() == "null" => None,
            Some(raw) => {
                let t = raw.get().trim_start();
                let ok = t.starts_with('"')
                    || t.starts_with('-')
                    || t.starts_with(|c: char| c.is_ascii_digit());
                if !ok {
                    return Err((None, RequestError::BadId));
                }
                Some(raw.to_owned())
            }
        };
        match env.method {
            Some(serde_json::Value::String(method)) => Ok(Request {
                id,
                method,
                raw: frame,
            }),
            _ => Err((id, RequestError::NoMethod)),
        }
    }
}

/// `{"id":ID,"method":"ping"}`: the heartbeat request either side may send.
pub fn ping_json(id: &RawValue) -> String {
    format!("{{\"id\":{},\"method\":\"ping\"}}", id.get())
}

impl Request<'_> {
    /// The request frame with its `id` set to `id` (written first; any
    /// previous id dropped; the other fields kept raw, in order). Used by
    /// a server that assigns its own ids to match answers.
    pub fn with_id(&self, id: &RawValue) -> String {
        let mut out = String::with_capacity(self.raw.len() + id.get().len() + 8);
        out.push_str("{\"id\":");
        out.push_str(id.get());
        // `raw` parsed as an object in `parse`; reading it again cannot fail.
        if let Ok(Fields(fields)) = std::str::from_utf8(self.raw)
            .map_err(|_| ())
            .and_then(|t| serde_json::from_str(t).map_err(|_| ()))
        {
            for (key, value) in fields.iter().filter(|(k, _)| k != "id") {
                out.push(',');
                out.push_str(&serde_json::to_string(key).unwrap_or_else(|_| String::from("\"\"")));
                out.push(':');
                out.push_str(value.get());
            }
        }
        out.push('}');
        out
    }
}

/// An object's fields in order, values raw.
struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
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
    fn with_id_replaces_or_adds_the_id() {
        let id = RawValue::from_string("17".into()).unwrap();
        let r = Request::parse(
            br#"{"method":"sync.bash","id":"a","cmd":"echo \"x\"","env":{"A":"1"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.with_id(&id),
            r#"{"id":17,"method":"sync.bash","cmd":"echo \"x\"","env":{"A":"1"}}"#
        );
        let r = Request::parse(br#"{"method":"ping"}"#).unwrap();
        assert_eq!(r.with_id(&id), r#"{"id":17,"method":"ping"}"#);
        assert_eq!(ping_json(&id), r#"{"id":17,"method":"ping"}"#);
    }

    #[test]
    fn refuses_garbage_with_clear_errors() {
        assert!(matches!(
            Request::parse(b"hello").unwrap_err().1,
            RequestError::NotJson(_)
        ));
        assert!(matches!(
            Request::parse(b"[1,2]").unwrap_err().1,
            RequestError::NotJson(_)
        ));
        assert!(matches!(
            Request::parse(b"\xff").unwrap_err().1,
            RequestError::NotJson(_)
        ));
        let (id, e) = Request::parse(br#"{"id":"9"}"#).unwrap_err();
        assert_eq!(e, RequestError::NoMethod);
        assert_eq!(id.unwrap().get(), "\"9\"");
        assert_eq!(
            Request::parse(br#"{"id":{},"method":"ping"}"#)
                .unwrap_err()
                .1,
            RequestError::BadId
        );
        assert_eq!(
            Request::parse(br#"{"method":5}"#).unwrap_err().1,
            RequestError::NoMethod
        );
    }
}

//! Responses: `{"id":..,"resp":"success"|"failed","retcode":N,"message":..,"data":..}`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::{self, MessageError};
use crate::retcode::Retcode;

/// A response to one request (protocol §5).
#[derive(Debug, Clone)]
pub struct Response {
    /// The request's id echoed as given (a JSON string or number); `None`
    /// is written as `null` (a frame that could not be read) or left out
    /// (`omit_id`, the ctl tool's output).
    pub id: Option<Box<RawValue>>,
    pub omit_id: bool,
    /// `Some("init")` for init replies; normally left out.
    pub method: Option<String>,
    pub retcode: Retcode,
    pub message: String,
    /// Any JSON value, already checked to be valid JSON.
    pub data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ResponseEnvelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    retcode: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Skip::skip")]
    id: Skip<'a>,
    resp: &'static str,
    retcode: u32,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

/// The id field: omitted, `null`, or the raw value.
#[derive(Serialize)]
#[serde(untagged)]
enum Skip<'a> {
    Omit,
    Value(Option<&'a RawValue>),
}

impl Skip<'_> {
    fn skip(&self) -> bool {
        matches!(self, Skip::Omit)
    }
}

impl Response {
    /// A response with the code's standard message.
    pub fn new(id: Option<Box<RawValue>>, retcode: Retcode) -> Self {
        Response {
            id,
            omit_id: false,
            method: None,
            retcode,
            message: retcode.message().to_owned(),
            data: None,
        }
    }

    /// A failure with a specific message.
    pub fn failed(id: Option<Box<RawValue>>, retcode: Retcode, message: impl Into<String>) -> Self {
        Response {
            message: message.into(),
            ..Response::new(id, retcode)
        }
    }

    /// Builds a response from what a plugin completed with: an empty
    /// message becomes the standard one; `data` must be valid JSON, else
    /// the response becomes `3025 Plugin failure`.
    pub fn from_plugin(
        id: Option<Box<RawValue>>,
        retcode: u32,
        message: &str,
        data: Option<&str>,
    ) -> Self {
        Self::from_plugin_owned(id, retcode, message.to_owned(), data.map(str::to_owned))
    }

    /// [`Response::from_plugin`] taking the texts by value, so that a large
    /// `data` (a command's output) is checked in place, not copied.
    pub fn from_plugin_owned(
        id: Option<Box<RawValue>>,
        retcode: u32,
        message: String,
        data: Option<String>,
    ) -> Self {
        let retcode = Retcode(retcode);
        let data = match data {
            None => None,
            Some(mut text) => {
                let end = text.trim_end().len();
                text.truncate(end);
                let start = text.len() - text.trim_start().len();
                if start > 0 {
                    text.drain(..start);
                }
                match RawValue::from_string(text) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        return Response::failed(
                            id,
                            Retcode::PLUGIN_FAILURE,
                            format!("Plugin failure: plugin returned invalid JSON data: {e}"),
                        )
                    }
                }
            }
        };
        let message = if message.is_empty() {
            retcode.message().to_owned()
        } else {
            message
        };
        Response {
            id,
            omit_id: false,
            method: None,
            retcode,
            message,
            data,
        }
    }

    /// Sets `data` from a serialisable value.
    pub fn with_data<T: Serialize>(mut self, data: &T) -> Self {
        self.data = serde_json::value::to_raw_value(data).ok();
        self
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            method: self.method.as_deref(),
            id: if self.omit_id {
                Skip::Omit
            } else {
                Skip::Value(self.id.as_deref())
            },
            resp: self.retcode.resp(),
            retcode: self.retcode.0,
            message: &self.message,
            data: self.data.as_deref(),
        }
    }

    /// The response as one JSON object without the trailing newline.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every field is a plain
        // string, number or already-valid raw JSON.
        serde_json::to_string(&self.wire()).unwrap_or_else(|_| String::from("{}"))
    }

    /// Appends the response and its `\n` to `out` (one frame), serialised
    /// straight into `out` (no intermediate copy of a large `data`).
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        let start = out.len();
        if serde_json::to_writer(&mut *out, &self.wire()).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
        out.push(b'\n');
    }

    /// [`Response::write_frame`] with the frame bound: the JSON is at most
    /// `limit` bytes (what the peer's decoder accepts), else nothing is
    /// appended and the error says so. Serialisation stops at the limit,
    /// so an oversized answer never costs more than `limit` bytes.
    pub fn write_frame_limited(
        &self,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), crate::FrameTooLong> {
        crate::frame::write_limited(&self.wire(), out, limit)
    }

    /// Decodes a response frame (the peer's answer to one of our
    /// requests). `resp` must be `"success"` or `"failed"`; `retcode` is
    /// required except on success (then 2); `message` defaults to the
    /// code's standard message; `id` and `data` are kept raw (`null` reads
    /// as `None`); other fields are ignored.
    pub fn parse(frame: &[u8]) -> Result<Response, MessageError> {
        let env: ResponseEnvelope<'_> = envelope::object(frame)?;
        let resp = envelope::string(env.resp, "resp")?;
        let retcode = envelope::opt_u32(env.retcode, "retcode")?;
        let retcode = match (resp.as_str(), retcode) {
            (_, Some(code)) => Retcode(code),
            ("success", None) => Retcode::SUCCESS,
            _ => return Err(MessageError::BadField("retcode")),
        };
        if resp != "success" && resp != "failed" {
            return Err(MessageError::BadField("resp"));
        }
        let message = envelope::opt_string(env.message, "message")?
            .unwrap_or_else(|| retcode.message().to_owned());
        Ok(Response {
            id: envelope::opt_id(env.id, "id")?,
            omit_id: false,
            method: envelope::opt_string(env.method, "method")?,
            retcode,
            message,
            data: envelope::present(env.data).map(RawValue::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_frame_is_written_whole_or_not_at_all() {
        let r = Response::from_plugin(
            Some(RawValue::from_string("7".into()).unwrap()),
            2,
            "",
            Some(r#"{"s":"\u0001\u0001"}"#),
        );
        let mut whole = Vec::new();
        r.write_frame(&mut whole);
        let json_len = whole.len() - 1;
        let mut out = b"prefix".to_vec();
        r.write_frame_limited(&mut out, json_len).unwrap();
        assert_eq!(&out[6..], &whole[..]);
        let mut out = b"prefix".to_vec();
        assert_eq!(
            r.write_frame_limited(&mut out, json_len - 1),
            Err(crate::FrameTooLong {
                limit: json_len - 1
            })
        );
        assert_eq!(out, b"prefix", "nothing appended");
    }

    #[test]
    fn success_with_data_and_id() {
        let id = RawValue::from_string("\"42\"".into()).ok();
        let r = Response::from_plugin(id, 2, "", Some("{\"a\":1}"));
        assert_eq!(
            r.to_json(),
            r#"{"id":"42","resp":"success","retcode":2,"message":"Normal termination","data":{"a":1}}"#
        );
    }

    #[test]
    fn null_id_and_omitted_id() {
        let r = Response::failed(None, Retcode::INVALID_REQUEST, "not JSON");
        assert_eq!(
            r.to_json(),
            r#"{"id":null,"resp":"failed","retcode":3020,"message":"not JSON"}"#
        );
        let mut r = Response::new(None, Retcode::SUCCESS);
        r.omit_id = true;
        assert_eq!(
            r.to_json(),
            r#"{"resp":"success","retcode":2,"message":"Normal termination"}"#
        );
    }

    #[test]
    fn parse_round_trip_and_refusals() {
        let text = r#"{"id":"42","resp":"failed","retcode":3021,"message":"bad","data":[1, 2]}"#;
        let r = Response::parse(text.as_bytes()).unwrap();
        assert_eq!(r.id.as_deref().map(RawValue::get), Some("\"42\""));
        assert_eq!(r.retcode, Retcode::INVALID_PARAMS);
        assert_eq!(
            r.to_json(),
            r#"{"id":"42","resp":"failed","retcode":3021,"message":"bad","data":[1, 2]}"#
        );
        let r = Response::parse(br#"{"id":null,"resp":"success"}"#).unwrap();
        assert!(r.id.is_none());
        assert_eq!(r.message, "Normal termination");
        assert_eq!(
            Response::parse(br#"{"resp":"failed"}"#).unwrap_err(),
            MessageError::BadField("retcode")
        );
        assert_eq!(
            Response::parse(br#"{"resp":"ok","retcode":2}"#).unwrap_err(),
            MessageError::BadField("resp")
        );
        assert_eq!(
            Response::parse(br#"{"id":{},"resp":"success"}"#).unwrap_err(),
            MessageError::BadField("id")
        );
        assert!(matches!(
            Response::parse(b"[1]"),
            Err(MessageError::NotJson(_))
        ));
    }

    #[test]
    fn invalid_plugin_json_becomes_plugin_failure() {
        let r = Response::from_plugin(None, 2, "", Some("{not json"));
        assert_eq!(r.retcode, Retcode::PLUGIN_FAILURE);
        assert!(r.message.contains("invalid JSON"), "{}", r.message);
        assert!(r.data.is_none());
    }
}

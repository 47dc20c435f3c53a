//! Reading one JSON object frame field by field; shared by every message decoder.
//!
//! Each decoder deserialises the frame into a struct of borrowed
//! `Option<&RawValue>` fields (unknown fields ignored), then reads each field
//! with the typed helpers here, so a wrong type is reported by field name
//! instead of as a generic serde error.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::server_list::ServerAddrError;

/// Why a frame is not the message that was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    #[error("expected {expected}, got method {got:?}")]
    WrongMethod {
        expected: &'static str,
        got: Option<String>,
    },
    #[error("field \"{0}\" is missing or has the wrong type")]
    BadField(&'static str),
    #[error("redirect lists no usable server ({} invalid entries)", errors.len())]
    EmptyRedirect { errors: Vec<ServerAddrError> },
}

/// Deserialises `frame` (one line, no `\n`) as a JSON object into `T`.
pub(crate) fn object<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, MessageError> {
    let text = std::str::from_utf8(frame).map_err(|_| MessageError::NotJson("not UTF-8".into()))?;
    // serde accepts an array for a struct; the protocol does not.
    if !text.trim_start().starts_with('{') {
        return Err(MessageError::NotJson("not an object".into()));
    }
    serde_json::from_str(text).map_err(|e| MessageError::NotJson(e.to_string()))
}

/// A field's raw value, with JSON `null` read as absent.
pub(crate) fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get().trim() != "null")
}

pub(crate) fn opt_string(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<String>, MessageError> {
    present(raw)
        .map(|r| serde_json::from_str::<String>(r.get()).map_err(|_| MessageError::BadField(field)))
        .transpose()
}

pub(crate) fn string(raw: Option<&RawValue>, field: &'static str) -> Result<String, MessageError> {
    opt_string(raw, field)?.ok_or(MessageError::BadField(field))
}

pub(crate) fn opt_u64(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<u64>, MessageError> {
    present(raw)
        .map(|r| serde_json::from_str::<u64>(r.get()).map_err(|_| MessageError::BadField(field)))
        .transpose()
}

pub(crate) fn opt_u32(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<u32>, MessageError> {
    present(raw)
        .map(|r| serde_json::from_str::<u32>(r.get()).map_err(|_| MessageError::BadField(field)))
        .transpose()
}

/// An id or task id as the protocol allows it: a JSON string or number.
pub(crate) fn opt_id(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<Box<RawValue>>, MessageError> {
    match present(raw) {
        None => Ok(None),
        Some(r) => {
            let t = r.get().trim_start();
            if t.starts_with('"')
                || t.starts_with('-')
                || t.starts_with(|c: char| c.is_ascii_digit())
            {
                Ok(Some(r.to_owned()))
            } else {
                Err(MessageError::BadField(field))
            }
        }
    }
}

//! Classifying one received frame: a response, a task push, or a request.
//!
//! The rule, the same in both directions, checked in this order:
//!
//! 1. not a JSON object → error (answer `3020` with `"id": null`);
//! 2. `"method":"task.ack"` → [`Incoming::TaskAck`] (server → agent);
//! 3. `"method":"task.done"` → [`Incoming::TaskDone`] (agent → server; it
//!    carries `resp` too, so this check comes before the next);
//! 4. has a `"resp"` field → [`Incoming::Response`] (an answer to one of
//!    *our* requests, e.g. the agent's ping; init replies, which carry
//!    `"method":"init"` and `resp`, land here too);
//! 5. anything else → [`Request::parse`] → [`Incoming::Request`] (with or
//!    without id), or its error.
//!
//! Each side handles the variants it expects and treats the others as it
//! would an unknown method (the agent answers a `task.done` request from
//! the server with `3022` like any other method it does not serve).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::{self, MessageError};
use crate::request::{Request, RequestError};
use crate::response::Response;
use crate::task::{TaskAck, TaskDone};

/// What a frame from the peer is.
#[derive(Debug)]
pub enum Incoming<'a> {
    Response(Response),
    TaskAck(TaskAck),
    TaskDone(TaskDone),
    Request(Request<'a>),
}

/// Why a frame could not be classified; answer with
/// `Response::failed(id, Retcode::INVALID_REQUEST, error.to_string())`.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct IncomingError {
    /// The frame's id when it could be read (echo it in the answer).
    pub id: Option<Box<RawValue>>,
    pub error: IncomingErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncomingErrorKind {
    /// Not a request (not JSON, not an object, no method, bad id).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A response or task message with a missing or mistyped field.
    #[error(transparent)]
    Message(#[from] MessageError),
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resp: Option<&'a RawValue>,
}

impl<'a> Incoming<'a> {
    /// Classifies one frame (without its `\n`); see the module doc.
    pub fn classify(frame: &'a [u8]) -> Result<Incoming<'a>, IncomingError> {
        let peek: Peek<'_> = match envelope::object(frame) {
            Ok(p) => p,
            Err(_) => {
                // Let the request parser word the error exactly.
                return match Request::parse(frame) {
                    Ok(r) => Ok(Incoming::Request(r)),
                    Err((id, e)) => Err(IncomingError {
                        id,
                        error: e.into(),
                    }),
                };
            }
        };
        let id = || envelope::opt_id(peek.id, "id").ok().flatten();
        let fail = |e: MessageError| IncomingError {
            id: id(),
            error: e.into(),
        };
        let method = envelope::opt_string(peek.method, "method").ok().flatten();
        match method.as_deref() {
            Some("task.ack") => TaskAck::parse(frame).map(Incoming::TaskAck).map_err(fail),
            Some("task.done") => TaskDone::parse(frame).map(Incoming::TaskDone).map_err(fail),
            _ if envelope::present(peek.resp).is_some() => {
                Response::parse(frame).map(Incoming::Response).map_err(fail)
            }
            _ => Request::parse(frame)
                .map(Incoming::Request)
                .map_err(|(id, e)| IncomingError {
                    id,
                    error: e.into(),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retcode::Retcode;

    #[test]
    fn classifies_each_kind() {
        match Incoming::classify(
            br#"{"id":"p1","resp":"success","retcode":2,"message":"Normal termination"}"#,
        ) {
            Ok(Incoming::Response(r)) => {
                assert_eq!(r.id.unwrap().get(), "\"p1\"");
                assert_eq!(r.retcode, Retcode::SUCCESS);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Incoming::classify(br#"{"method":"task.ack","task":"t"}"#),
            Ok(Incoming::TaskAck(TaskAck { .. }))
        ));
        assert!(matches!(
            Incoming::classify(br#"{"method":"task.done","task":"t","retcode":2}"#),
            Ok(Incoming::TaskDone(_))
        ));
        // task.done carries resp but is not a response.
        let done = crate::task::TaskDone::new("t", &Response::new(None, Retcode::SUCCESS));
        assert!(matches!(
            Incoming::classify(done.to_json().as_bytes()),
            Ok(Incoming::TaskDone(_))
        ));
        match Incoming::classify(br#"{"id":3,"method":"ping"}"#) {
            Ok(Incoming::Request(r)) => assert_eq!(r.method, "ping"),
            other => panic!("{other:?}"),
        }
        // resp wins over other methods (init replies carry both).
        assert!(matches!(
            Incoming::classify(br#"{"method":"init","resp":"success","retcode":2}"#),
            Ok(Incoming::Response(_))
        ));
    }

    #[test]
    fn errors_carry_the_id_when_readable() {
        let e = Incoming::classify(b"garbage").unwrap_err();
        assert!(e.id.is_none());
        assert!(matches!(
            e.error,
            IncomingErrorKind::Request(RequestError::NotJson(_))
        ));
        let e = Incoming::classify(br#"{"id":5}"#).unwrap_err();
        assert_eq!(e.id.unwrap().get(), "5");
        let e = Incoming::classify(br#"{"id":6,"resp":"success","retcode":"x"}"#).unwrap_err();
        assert_eq!(e.id.unwrap().get(), "6");
        assert_eq!(
            e.error,
            IncomingErrorKind::Message(MessageError::BadField("retcode"))
        );
        let e = Incoming::classify(br#"{"method":"task.ack"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field \"task\" is missing or has the wrong type"
        );
    }
}

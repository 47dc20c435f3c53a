//! Fuzzes what the agent and the server read from a line: `Request::parse`
//! (and `with_id`, which the server uses to renumber requests),
//! `Incoming::classify`, and the `Response`, `Init`, `TaskDone` and
//! `TaskAck` decoders. Nothing may panic; a request renumbered with
//! `with_id` must parse again with the same method and the new id.
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

use basicagent_proto::init::Init;
use basicagent_proto::{Incoming, Request, Response, TaskAck, TaskDone};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let _ = Incoming::classify(data);
    let _ = Response::parse(data);
    let _ = Init::parse(data);
    let _ = TaskDone::parse(data);
    let _ = TaskAck::parse(data);
    if let Ok(request) = Request::parse(data) {
        let Ok(id) = RawValue::from_string("\"fuzz-7\"".to_owned()) else {
            return;
        };
        let renumbered = request.with_id(&id);
        match Request::parse(renumbered.as_bytes()) {
            Ok(again) => {
                assert_eq!(again.method, request.method, "with_id changed the method");
                assert_eq!(
                    again.id.as_deref().map(RawValue::get),
                    Some("\"fuzz-7\""),
                    "with_id lost the id"
                );
            }
            Err((_, e)) => panic!("with_id output does not parse: {e}: {renumbered}"),
        }
    }
});

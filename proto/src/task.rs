//! Task messages pushed outside request/response (protocol §7): the agent's `task.done`, the server's `task.ack`.
//!
//! Task ids are strings (the agent makes them); a number is also read, as
//! its decimal text, so a hand-written `"task":7` still works.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::{self, MessageError};
use crate::response::Response;
use crate::retcode::Retcode;

/// `{"method":"task.done","task":ID,"resp":..,"retcode":..,"message":..,"data":..}`:
/// the final result of an `async.*` task, pushed until acknowledged.
#[derive(Debug, Clone)]
pub struct TaskDone {
    pub task: String,
    pub retcode: Retcode,
    pub message: String,
    pub data: Option<Box<RawValue>>,
    /// Set when the result is a run of a schedule (`schedule.add`).
    pub run: Option<ScheduleRun>,
}

/// The extra `task.done` fields of a scheduled run: `schedule` (its id),
/// `scheduled_at` (the slot, Unix seconds, before jitter) and `run` (1, 2 …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRun {
    pub schedule: String,
    pub scheduled_at: u64,
    pub run: u64,
}

/// `{"method":"task.ack","task":ID}`: the server has the result; the agent may delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAck {
    pub task: String,
}

#[derive(Serialize)]
struct DoneWire<'a> {
    method: &'static str,
    task: &'a str,
    resp: &'static str,
    retcode: u32,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<u64>,
}

#[derive(Serialize)]
struct AckWire<'a> {
    method: &'static str,
    task: &'a str,
}

#[derive(Deserialize)]
struct TaskEnvelope<'a> {
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    task: Option<&'a RawValue>,
    #[serde(borrow, default)]
    retcode: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schedule: Option<&'a RawValue>,
    #[serde(borrow, default)]
    scheduled_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    run: Option<&'a RawValue>,
}

fn check_method(env: &TaskEnvelope<'_>, expected: &'static str) -> Result<(), MessageError> {
    match envelope::opt_string(env.method, "method")? {
        Some(m) if m == expected => Ok(()),
        got => Err(MessageError::WrongMethod { expected, got }),
    }
}

fn task_id(env: &TaskEnvelope<'_>) -> Result<String, MessageError> {
    let raw = envelope::opt_id(env.task, "task")?.ok_or(MessageError::BadField("task"))?;
    let text = raw.get();
    let id = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|_| MessageError::BadField("task"))?
    } else {
        text.to_owned()
    };
    if id.is_empty() {
        return Err(MessageError::BadField("task"));
    }
    Ok(id)
}

impl TaskDone {
    /// The push for `task` carrying a finished response's code, message and data.
    pub fn new(task: impl Into<String>, result: &Response) -> Self {
        TaskDone {
            task: task.into(),
            retcode: result.retcode,
            message: result.message.clone(),
            data: result.data.clone(),
            run: None,
        }
    }

    /// The same result marked as run `run` of a schedule.
    pub fn with_run(mut self, run: Option<ScheduleRun>) -> Self {
        self.run = run;
        self
    }

    /// The result as a response without id (for printing or storing).
    pub fn to_response(&self) -> Response {
        Response {
            message: self.message.clone(),
            data: self.data.clone(),
            ..Response::new(None, self.retcode)
        }
    }

    fn wire(&self) -> DoneWire<'_> {
        DoneWire {
            method: "task.done",
            task: &self.task,
            resp: self.retcode.resp(),
            retcode: self.retcode.0,
            message: &self.message,
            data: self.data.as_deref(),
            schedule: self.run.as_ref().map(|r| r.schedule.as_str()),
            scheduled_at: self.run.as_ref().map(|r| r.scheduled_at),
            run: self.run.as_ref().map(|r| r.run),
        }
    }

    /// [`TaskDone::write_frame`] with the frame bound (see
    /// [`Response::write_frame_limited`]).
    pub fn write_frame_limited(
        &self,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), crate::FrameTooLong> {
        crate::frame::write_limited(&self.wire(), out, limit)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.wire()).unwrap_or_else(|_| String::from("{}"))
    }

    pub fn write_frame(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_json().as_bytes());
        out.push(b'\n');
    }

    /// Decodes a `task.done` push. `retcode` is required; `resp` is not
    /// read (it follows from `retcode`); `message` defaults to the code's
    /// standard message.
    pub fn parse(frame: &[u8]) -> Result<TaskDone, MessageError> {
        let env: TaskEnvelope<'_> = envelope::object(frame)?;
        check_method(&env, "task.done")?;
        let task = task_id(&env)?;
        let retcode = Retcode(
            envelope::opt_u32(env.retcode, "retcode")?.ok_or(MessageError::BadField("retcode"))?,
        );
        let message = envelope::opt_string(env.message, "message")?
            .unwrap_or_else(|| retcode.message().to_owned());
        let data = envelope::present(env.data).map(RawValue::to_owned);
        let run = match envelope::opt_string(env.schedule, "schedule")? {
            Some(schedule) => Some(ScheduleRun {
                schedule,
                scheduled_at: envelope::opt_u64(env.scheduled_at, "scheduled_at")?
                    .ok_or(MessageError::BadField("scheduled_at"))?,
                run: envelope::opt_u64(env.run, "run")?.ok_or(MessageError::BadField("run"))?,
            }),
            None => None,
        };
        Ok(TaskDone {
            task,
            retcode,
            message,
            data,
            run,
        })
    }
}

impl TaskAck {
    pub fn new(task: impl Into<String>) -> Self {
        TaskAck { task: task.into() }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&AckWire {
            method: "task.ack",
            task: &self.task,
        })
        .unwrap_or_else(|_| String::from("{}"))
    }

    pub fn write_frame(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_json().as_bytes());
        out.push(b'\n');
    }

    /// Decodes a `task.ack`.
    pub fn parse(frame: &[u8]) -> Result<TaskAck, MessageError> {
        let env: TaskEnvelope<'_> = envelope::object(frame)?;
        check_method(&env, "task.ack")?;
        Ok(TaskAck {
            task: task_id(&env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_done_wire_and_round_trip() {
        let r = Response::from_plugin(None, 3023, "", Some(r#"{"stdout":"x"}"#));
        let d = TaskDone::new("t-1", &r);
        let json = d.to_json();
        assert_eq!(
            json,
            r#"{"method":"task.done","task":"t-1","resp":"failed","retcode":3023,"message":"Timeout","data":{"stdout":"x"}}"#
        );
        let back = TaskDone::parse(json.as_bytes()).unwrap();
        assert_eq!(back.task, "t-1");
        assert_eq!(back.retcode, Retcode::TIMEOUT);
        assert_eq!(back.data.unwrap().get(), r#"{"stdout":"x"}"#);
        assert_eq!(
            d.to_response().to_json(),
            r#"{"id":null,"resp":"failed","retcode":3023,"message":"Timeout","data":{"stdout":"x"}}"#
        );
    }

    #[test]
    fn a_scheduled_run_carries_schedule_slot_and_run() {
        let r = Response::from_plugin(None, 2, "", Some(r#"{"k":1}"#));
        let d = TaskDone::new("t-2", &r).with_run(Some(ScheduleRun {
            schedule: "s-1".into(),
            scheduled_at: 1_700_000_000,
            run: 3,
        }));
        let json = d.to_json();
        assert!(
            json.ends_with(r#""data":{"k":1},"schedule":"s-1","scheduled_at":1700000000,"run":3}"#),
            "{json}"
        );
        let back = TaskDone::parse(json.as_bytes()).unwrap();
        assert_eq!(back.run, d.run);
        // Without `schedule`, no run; a schedule without its slot is refused.
        assert_eq!(
            TaskDone::parse(br#"{"method":"task.done","task":"a","retcode":2,"run":4}"#)
                .unwrap()
                .run,
            None
        );
        assert!(matches!(
            TaskDone::parse(
                br#"{"method":"task.done","task":"a","retcode":2,"schedule":"s","run":1}"#
            ),
            Err(MessageError::BadField("scheduled_at"))
        ));
    }

    #[test]
    fn task_ack_wire_and_round_trip() {
        let a = TaskAck::new("t-9");
        assert_eq!(a.to_json(), r#"{"method":"task.ack","task":"t-9"}"#);
        assert_eq!(TaskAck::parse(a.to_json().as_bytes()).unwrap(), a);
        assert_eq!(
            TaskAck::parse(br#"{"method":"task.ack","task":17}"#)
                .unwrap()
                .task,
            "17"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            TaskAck::parse(br#"{"method":"task.ack"}"#),
            Err(MessageError::BadField("task"))
        );
        assert_eq!(
            TaskAck::parse(br#"{"method":"task.ack","task":""}"#),
            Err(MessageError::BadField("task"))
        );
        assert_eq!(
            TaskAck::parse(br#"{"method":"task.ack","task":[1]}"#),
            Err(MessageError::BadField("task"))
        );
        assert!(matches!(
            TaskAck::parse(br#"{"method":"task.done","task":"a"}"#),
            Err(MessageError::WrongMethod { .. })
        ));
        assert!(matches!(
            TaskDone::parse(br#"{"method":"task.done","task":"a"}"#),
            Err(MessageError::BadField("retcode"))
        ));
        assert!(matches!(
            TaskDone::parse(b"nope"),
            Err(MessageError::NotJson(_))
        ));
    }
}

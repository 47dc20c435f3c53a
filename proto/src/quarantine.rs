//! The quarantine's wire parts: the `timeout` a request names (peeked by
//! the agent to set the call's deadline) and the quarantined plugins that
//! `agent.info` lists.

use serde::Serialize;
use serde_json::Value;

/// The request's top-level `"timeout"` as a number of seconds, when the
/// frame is a JSON object that has one and it is a number (any sign; the
/// caller decides what it accepts). The frame is parsed only when its bytes
/// mention `"timeout"`, so requests without one cost a byte scan.
pub fn request_timeout(frame: &[u8]) -> Option<f64> {
    if !frame.windows(9).any(|w| w == b"\"timeout\"") {
        return None;
    }
    let v: Value = serde_json::from_slice(frame).ok()?;
    v.get("timeout")?.as_f64()
}

/// One quarantined plugin as `agent.info` (and `BasicAgentCtl -l`) shows
/// it. Fields are declared in the order they are written (alphabetical,
/// as the agent always wrote them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedPlugin {
    /// The file it was loaded from.
    pub file: String,
    /// The plugin's name (`getinfo_testkit`).
    pub plugin: String,
    /// Why (a crash, repeated timeouts …).
    pub reason: String,
    /// Seconds until it is released; `null` while it waits for its file to
    /// change.
    pub seconds_left: Option<u64>,
    /// When it is released (`YYYY-MM-DDTHH:MM:SSZ`) or `"its file changes"`.
    pub until: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_read_only_from_a_json_object_with_a_number() {
        assert_eq!(
            request_timeout(br#"{"method":"x","timeout":2.5}"#),
            Some(2.5)
        );
        assert_eq!(request_timeout(br#"{"timeout":7}"#), Some(7.0));
        assert_eq!(request_timeout(br#"{"timeout":-1}"#), Some(-1.0));
        assert_eq!(request_timeout(br#"{"timeout":"5"}"#), None);
        assert_eq!(request_timeout(br#"{"cmd":"sleep 5"}"#), None);
        assert_eq!(request_timeout(br#"["timeout",5]"#), None);
        assert_eq!(request_timeout(br#"{"timeout":5"#), None);
        assert_eq!(request_timeout(b"\"timeout\""), None);
    }

    #[test]
    fn an_entry_is_written_with_its_fields_in_order() {
        let e = QuarantinedPlugin {
            file: "/p/libgetinfo_testkit.so".into(),
            plugin: "getinfo_testkit".into(),
            reason: "crashed".into(),
            seconds_left: None,
            until: "its file changes".into(),
            version: "1.0".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"file":"/p/libgetinfo_testkit.so","plugin":"getinfo_testkit","reason":"crashed","seconds_left":null,"until":"its file changes","version":"1.0"}"#
        );
    }
}

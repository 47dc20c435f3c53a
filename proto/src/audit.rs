//! The audit trail as the wire shows it: the `audit` member of
//! `agent.info` (the lines themselves are a file format, kept by the
//! `basicagent-auditchain` crate).

use serde::Serialize;

/// `agent.info`'s `audit`: `{"failing", "failures", "lines"}`. Fields are
/// declared in the order they are written (alphabetical, as the agent
/// always wrote them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditHealth {
    /// The last write failed.
    pub failing: bool,
    /// Lines that could not be written since the start.
    pub failures: u64,
    /// Lines written since the start.
    pub lines: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_is_written_with_its_fields_in_order() {
        let h = AuditHealth {
            failing: true,
            failures: 2,
            lines: 40,
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"failing":true,"failures":2,"lines":40}"#
        );
    }
}

//! BasicAgentServer (placeholder until the daemon issue).
fn main() {}

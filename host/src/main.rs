//! BasicAgent daemon (placeholder until the daemon issue).
fn main() {}

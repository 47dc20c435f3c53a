//! The server's integration tests' harness: basicagent-testsupport (PKI,
//! the real server, a fake agent, loopback addresses), under the names
//! these tests always used.
#![allow(dead_code, unused_imports)]

pub use basicagent_testsupport::fake::Agent;
pub use basicagent_testsupport::{
    free_addr, stdout_lines, wait_for, AgentConfig, Pki, Server, NAME, WAIT,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_BasicAgentServer");

/// A real BasicAgent daemon (quiet, in the foreground) for `server`:
/// DNS off, the built plugins, host id `host_id` when given.
pub fn real_agent(
    pki: &Pki,
    servers: &[std::net::SocketAddr],
    host_id: Option<String>,
) -> basicagent_testsupport::Agent {
    let ips: Vec<String> = servers.iter().map(|s| s.ip().to_string()).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let port = servers.first().expect("a server").port();
    let mut config = AgentConfig::new(pki, port, &ips);
    config.host_id = host_id;
    basicagent_testsupport::Agent::start_quiet(&config)
}

//! BasicAgentSwarm: parses flags, runs the swarm, prints its report line (see the library).
#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use basicagent_swarm::options::{self, USAGE};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match options::parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("BasicAgentSwarm: {e}");
            return ExitCode::from(2);
        }
    };
    if opts.print_ids_only() {
        for id in opts.host_ids() {
            println!("{id}");
        }
        return ExitCode::SUCCESS;
    }
    match basicagent_swarm::run::run(opts) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("BasicAgentSwarm: {e}");
            ExitCode::from(2)
        }
    }
}

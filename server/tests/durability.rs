//! The real BasicAgent daemon runs `async.bash` tasks while the server is killed with SIGKILL; nothing acked is lost, nothing is stored twice.

mod util;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use util::{free_addr, real_agent, wait_for, Pki, Server, WAIT};

fn stored(server: &Server, host: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for t in server
        .get(&format!("/v1/tasks?host={host}&limit=10000"))
        .as_array()
        .unwrap()
    {
        *seen
            .entry(t["task"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    seen
}

#[test]
fn kill_9_of_the_server_loses_no_acked_task_result_of_a_real_agent() {
    const TASKS: usize = 60;
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let listen = free_addr();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut server = Server::start_at(listen, &cert, &key, &["--state-dir", &state_dir]);
    let daemon = real_agent(&pki, &[listen], None);
    let host = wait_for("the agent", WAIT, || {
        let agents = server.get("/v1/agents");
        agents[0]["host"].as_str().map(str::to_owned)
    });

    // Tasks that finish spread over about a second.
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let lines = server.api_call(
            &json!({"target": {"hosts": [host]},
                    "request": {"method": "async.bash",
                                "cmd": format!("sleep 0.{}; echo {i}", i % 10)},
                    "timeout": 20})
            .to_string(),
        );
        let task = lines[0]["data"]["task"]
            .as_str()
            .unwrap_or_else(|| panic!("no task id: {lines:?}\n{}", daemon.log()))
            .to_owned();
        tasks.push(task);
    }
    // Kill -9 while results are being delivered and acknowledged.
    wait_for("some results stored", WAIT, || {
        (stored(&server, &host).len() >= 5).then_some(())
    });
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let acked_before = TASKS - daemon.unacked();

    // Same address, same state: the agent comes back and sends what was not acknowledged.
    let server = Server::start_at(listen, &cert, &key, &["--state-dir", &state_dir]);
    let seen = wait_for("every result", Duration::from_secs(60), || {
        let seen = stored(&server, &host);
        (seen.len() == TASKS && daemon.unacked() == 0).then_some(seen)
    });
    for task in &tasks {
        assert_eq!(seen.get(task), Some(&1), "task {task} stored exactly once");
    }
    assert!(acked_before > 0, "some results were acked before the kill");
    let one = server.get(&format!("/v1/tasks/{}", tasks[0]));
    assert_eq!(one[0]["host"], host.as_str());
    assert_eq!(one[0]["data"]["stdout"], "0\n", "{one}");
}

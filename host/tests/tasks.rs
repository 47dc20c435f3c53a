//! Asynchronous tasks end to end: the real daemon, the real server, real
//! commands; results survive a lost connection, `kill -9` and a redirect,
//! and go away only after `task.ack`.

use std::time::{Duration, Instant};

use basicagent_testsupport::*;
use serde_json::Value;

/// `task_done` events the server recorded for `task`.
fn pushes(server: &Server, task: &str) -> Vec<Value> {
    server
        .events()
        .into_iter()
        .filter(|e| e["event"] == "task_done" && e["task"] == task)
        .collect()
}

/// The result the server keeps for `task` (from `BasicAgentServer tasks`).
fn result(server: &Server, task: &str) -> Option<Value> {
    let out = std::process::Command::new(server_bin())
        .arg("tasks")
        .arg("--admin")
        .arg(server.admin.clone())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|t| t["task"] == task)
}

fn start_task(server: &Server, host: &str, cmd: &str) -> String {
    let started = Instant::now();
    let v = server.call(
        host,
        &serde_json::json!({"method": "async.bash", "cmd": cmd}).to_string(),
    );
    assert_eq!(v["retcode"], 2, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "async.bash answers at once"
    );
    v["data"]["task"].as_str().unwrap().to_owned()
}

#[test]
fn a_result_is_delivered_after_the_connection_was_lost_while_it_ran() {
    let pki = Pki::new();
    let port = free_port();
    let listen = format!("127.0.0.2:{port}");
    let server = Server::serve(&pki, &listen, "server", &[]);
    let _agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let task = start_task(&server, &host, "echo zero; sleep 2; echo one");
    // task.status reports the output so far.
    let status = wait_for("the first line", Duration::from_secs(5), || {
        let s = server.call(
            &host,
            &format!(r#"{{"method":"task.status","task":"{task}"}}"#),
        );
        (s["data"]["output"]["stdout"] == "zero\n").then_some(s)
    });
    assert_eq!(status["data"]["state"], "running", "{status}");
    assert!(status["data"]["elapsed_ms"].as_u64().is_some(), "{status}");
    server.stop();
    std::thread::sleep(Duration::from_millis(2500));
    let server = Server::serve(&pki, &listen, "server", &[]);
    server.wait_agent(Duration::from_secs(15));
    let r = wait_for(
        "the result at the new connection",
        Duration::from_secs(10),
        || result(&server, &task),
    );
    assert_eq!(r["retcode"], 2, "{r}");
    assert_eq!(r["data"]["stdout"], "zero\none\n");
}

#[test]
fn an_unacknowledged_result_survives_kill_9_and_an_ack_ends_it() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(
        &pki,
        &format!("127.0.0.2:{port}"),
        "server",
        &["--no-auto-ack"],
    );
    let mut agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let task = start_task(&server, &host, "echo two");
    wait_for("the first push", Duration::from_secs(10), || {
        (!pushes(&server, &task).is_empty()).then_some(())
    });
    // kill -9, then start again from the same state directory.
    agent.child.as_mut().unwrap().kill().unwrap();
    agent.wait_exit(Duration::from_secs(5));
    agent.spawn(&["-f"]);
    wait_for("the push after restart", Duration::from_secs(15), || {
        (pushes(&server, &task).len() >= 2).then_some(())
    });
    assert_eq!(result(&server, &task).unwrap()["data"]["stdout"], "two\n");
    // Acknowledge: deleted, never pushed again, not even after a restart.
    server.send(
        &host,
        format!("{{\"method\":\"task.ack\",\"task\":\"{task}\"}}\n").as_bytes(),
    );
    wait_for("the ack to land", Duration::from_secs(5), || {
        let list = server.call(&host, r#"{"method":"task.list"}"#);
        (list["data"]["count"] == 0).then_some(())
    });
    let before = pushes(&server, &task).len();
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(5));
    agent.spawn(&["-f"]);
    wait_for("the agent back", Duration::from_secs(15), || {
        server
            .events()
            .iter()
            .filter(|e| e["event"] == "init")
            .count()
            .ge(&3)
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pushes(&server, &task).len(),
        before,
        "pushed again after the ack"
    );
}

#[test]
fn unacknowledged_results_follow_the_agent_through_a_redirect() {
    let pki = Pki::new();
    let port = free_port();
    let first = format!("127.0.0.2:{port}");
    let server = Server::serve(&pki, &first, "server", &["--no-auto-ack"]);
    let _agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let task = start_task(&server, &host, "echo three");
    wait_for("the push", Duration::from_secs(10), || {
        (!pushes(&server, &task).is_empty()).then_some(())
    });
    server.stop();
    // The same address now redirects to another server.
    let target = Server::serve(&pki, &format!("127.0.0.3:{port}"), "server", &[]);
    let _front = Server::serve(
        &pki,
        &first,
        "server",
        &["--redirect", &format!("127.0.0.3:{port}")],
    );
    let r = wait_for(
        "the result at the redirect target",
        Duration::from_secs(15),
        || result(&target, &task),
    );
    assert_eq!(r["data"]["stdout"], "three\n");
}

#[test]
fn task_cancel_stops_the_command_with_3028() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.0.2:{port}"), "server", &[]);
    let _agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let task = start_task(&server, &host, "sleep 1099");
    wait_for("the command to run", Duration::from_secs(10), || {
        pgrep("sleep 1099").then_some(())
    });
    let started = Instant::now();
    let v = server.call(
        &host,
        &format!(r#"{{"method":"task.cancel","task":"{task}"}}"#),
    );
    assert_eq!(v["retcode"], 2, "{v}");
    let r = wait_for("the cancelled result", Duration::from_secs(5), || {
        result(&server, &task)
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancelled in {:?}",
        started.elapsed()
    );
    assert_eq!(r["retcode"], 3028, "{r}");
    assert!(!pgrep("sleep 1099"), "no process left");
    // Cancelling a finished or unknown task is a parameter error.
    let again = server.call(
        &host,
        &format!(r#"{{"method":"task.cancel","task":"{task}"}}"#),
    );
    assert_eq!(again["retcode"], 3021, "{again}");
}

#[test]
fn bounds_refuse_new_tasks_rather_than_lose_results() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(
        &pki,
        &format!("127.0.0.2:{port}"),
        "server",
        &["--no-auto-ack"],
    );
    let _agent = Agent::start(&pki, port, &["127.0.0.2"], "", "max_tasks = 2", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let a = start_task(&server, &host, "echo a");
    let b = start_task(&server, &host, "echo b");
    wait_for("both results", Duration::from_secs(10), || {
        (!pushes(&server, &a).is_empty() && !pushes(&server, &b).is_empty()).then_some(())
    });
    let refused = server.call(&host, r#"{"method":"async.bash","cmd":"echo c"}"#);
    assert_eq!(refused["retcode"], 3026, "{refused}");
    let list = server.call(&host, r#"{"method":"task.list"}"#);
    assert_eq!(list["data"]["count"], 2, "{list}");
    // Room again after an ack.
    server.send(
        &host,
        format!("{{\"method\":\"task.ack\",\"task\":\"{a}\"}}\n").as_bytes(),
    );
    wait_for("room after the ack", Duration::from_secs(5), || {
        let v = server.call(&host, r#"{"method":"async.bash","cmd":"echo d"}"#);
        (v["retcode"] == 2).then_some(())
    });
}

#[test]
fn a_task_running_at_kill_9_is_reported_failed_after_restart() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.0.2:{port}"), "server", &[]);
    let mut agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let task = start_task(&server, &host, "sleep 1098");
    wait_for("the command to run", Duration::from_secs(10), || {
        pgrep("sleep 1098").then_some(())
    });
    agent.child.as_mut().unwrap().kill().unwrap();
    agent.wait_exit(Duration::from_secs(5));
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 1098"])
        .status();
    agent.spawn(&["-f"]);
    let r = wait_for("the failed result", Duration::from_secs(15), || {
        result(&server, &task)
    });
    assert_eq!(r["retcode"], 3025, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("agent stopped while the task was running"),
        "{r}"
    );
}

#[test]
fn bad_task_requests_get_clear_errors_and_create_nothing() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.0.2:{port}"), "server", &[]);
    let _agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let v = server.call(&host, r#"{"method":"async.bash"}"#);
    assert_eq!(v["retcode"], 3021, "{v}");
    // An identity is checked when the command starts: the task's result
    // carries the 3024.
    let task = start_task(&server, &host, "id");
    let r = wait_for("a result", Duration::from_secs(10), || {
        result(&server, &task)
    });
    assert_eq!(r["retcode"], 2, "{r}");
    let v = server.call(
        &host,
        r#"{"method":"async.bash","cmd":"id","user":"no_such_user_xyz"}"#,
    );
    if v["retcode"] == 2 {
        let task = v["data"]["task"].as_str().unwrap().to_owned();
        let r = wait_for("the refusal", Duration::from_secs(10), || {
            result(&server, &task)
        });
        assert_eq!(r["retcode"], 3024, "{r}");
    } else {
        assert_eq!(v["retcode"], 3024, "{v}");
    }
    for req in [
        r#"{"method":"task.status"}"#,
        r#"{"method":"task.status","task":"../../etc/passwd"}"#,
        r#"{"method":"task.status","task":"0000"}"#,
        r#"{"method":"task.cancel","task":7}"#,
    ] {
        let v = server.call(&host, req);
        assert_eq!(v["retcode"], 3021, "{req}: {v}");
    }
    wait_for(
        "acknowledged results to be gone",
        Duration::from_secs(5),
        || {
            let list = server.call(&host, r#"{"method":"task.list"}"#);
            (list["data"]["count"] == 0).then_some(())
        },
    );
}

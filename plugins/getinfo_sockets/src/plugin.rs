//! The glue: request → [`Selection`], read the socket tables (proc root
//! injectable), find the owners of the sockets kept, serialise once,
//! complete at once.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use basicagent_abi::Call;
use basicagent_collector_kit as kit;
use serde::Serialize;

use crate::args::{parse_words, Selection};
use crate::owners::find_owners;
use crate::parse::{parse_table, state_name, Entry, Proto, TCP_ESTABLISHED, TCP_LISTEN};
use crate::{CollectorError, USAGE};

/// One socket as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Socket<'a> {
    pub proto: &'static str,
    pub local_address: IpAddr,
    pub local_port: u16,
    pub remote_address: IpAddr,
    pub remote_port: u16,
    pub state: &'static str,
    pub uid: u32,
    pub inode: u64,
    pub pid: Option<u32>,
    pub process: Option<&'a str>,
}

/// The `data` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report<'a> {
    pub sockets: Vec<Socket<'a>>,
    pub count: usize,
}

/// The selection a request asks for.
pub fn parse_request(request: &[u8]) -> Result<Selection, CollectorError> {
    Ok(kit::parse_request(request, USAGE, parse_words)?)
}

/// Whether `sel` keeps `e` of table `proto`.
pub fn keep(sel: &Selection, proto: Proto, e: &Entry) -> bool {
    if sel.listening_only {
        return e.listening(proto);
    }
    !proto.is_tcp() || sel.all_states || matches!(e.state, TCP_LISTEN | TCP_ESTABLISHED)
}

/// Request in, `data` JSON out. `proc_root` holds `net/` and the pids.
pub fn answer(request: &[u8], proc_root: &Path) -> Result<String, CollectorError> {
    let sel = parse_request(request)?;
    let mut kept: Vec<(Proto, Entry)> = Vec::new();
    let mut first_error = None;
    let mut read_any = false;
    let mut path = PathBuf::from(proc_root);
    path.push("net");
    for proto in Proto::ALL {
        if (proto.is_tcp() && !sel.tcp) || (!proto.is_tcp() && !sel.udp) {
            continue;
        }
        path.push(proto.name());
        match std::fs::read(&path) {
            Ok(text) => {
                read_any = true;
                kept.extend(
                    parse_table(&text)
                        .filter(|e| keep(&sel, proto, e))
                        .map(|e| (proto, e)),
                );
            }
            // A kernel without IPv6 has no tcp6/udp6: not an error alone.
            Err(source) => {
                log::debug!("cannot read {}: {source}", path.display());
                first_error.get_or_insert(CollectorError::Read {
                    path: path.clone(),
                    source,
                });
            }
        }
        path.pop();
    }
    if let (false, Some(e)) = (read_any, first_error) {
        return Err(e);
    }
    let wanted: HashSet<u64> = kept
        .iter()
        .map(|(_, e)| e.inode)
        .filter(|&i| i != 0)
        .collect();
    let owners = find_owners(proc_root, &wanted);
    let sockets: Vec<Socket<'_>> = kept
        .iter()
        .map(|(proto, e)| {
            let owner = owners.get(&e.inode);
            Socket {
                proto: proto.name(),
                local_address: e.local,
                local_port: e.local_port,
                remote_address: e.remote,
                remote_port: e.remote_port,
                state: state_name(*proto, e.state),
                uid: e.uid,
                inode: e.inode,
                pid: owner.map(|o| o.pid),
                process: owner.and_then(|o| o.name.as_deref()),
            }
        })
        .collect();
    let report = Report {
        count: sockets.len(),
        sockets,
    };
    kit::to_data(&report)
}

/// The plugin's `call`: answers synchronously.
pub fn call(call: Call, request: &[u8]) {
    kit::complete(call, answer(request, Path::new("/proc")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;
    use serde_json::{json, Value};
    use std::fs;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn line(n: u32, local: &str, remote: &str, st: &str, inode: u64) -> String {
        format!("{n:4}: {local} {remote} {st} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000\n")
    }

    /// A proc root with tcp and udp tables (no IPv6) and one owner.
    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("net")).unwrap();
        let tcp = [
            HEADER.to_owned(),
            line(0, "0100007F:1F90", "00000000:0000", "0A", 11),
            line(1, "0100007F:D431", "0100007F:1F90", "01", 12),
            line(2, "0100007F:D432", "0100007F:1F90", "06", 0),
            line(3, "0100007F:D433", "0100007F:1F90", "08", 13),
        ]
        .concat();
        let udp = [
            HEADER.to_owned(),
            line(0, "00000000:0044", "00000000:0000", "07", 21),
            line(1, "0100007F:9000", "0100007F:0035", "01", 22),
        ]
        .concat();
        fs::write(d.path().join("net/tcp"), tcp).unwrap();
        fs::write(d.path().join("net/udp"), udp).unwrap();
        fs::create_dir_all(d.path().join("42/fd")).unwrap();
        fs::write(d.path().join("42/comm"), "nginx\n").unwrap();
        std::os::unix::fs::symlink("socket:[11]", d.path().join("42/fd/3")).unwrap();
        d
    }

    fn run(args: &str, root: &Path) -> Value {
        let req = json!({ "args": args }).to_string();
        serde_json::from_str(&answer(req.as_bytes(), root).unwrap()).unwrap()
    }

    fn states(v: &Value) -> Vec<String> {
        v["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s["proto"].as_str().unwrap(),
                    s["state"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn default_listening_and_all() {
        let d = fixture();
        let v = run("", d.path());
        assert_eq!(
            states(&v),
            [
                "tcp:LISTEN",
                "tcp:ESTABLISHED",
                "udp:UNCONN",
                "udp:ESTABLISHED"
            ]
        );
        assert_eq!(v["count"], 4);
        assert_eq!(
            v["sockets"][0],
            json!({"proto":"tcp","local_address":"127.0.0.1","local_port":8080,
                   "remote_address":"0.0.0.0","remote_port":0,"state":"LISTEN",
                   "uid":0,"inode":11,"pid":42,"process":"nginx"})
        );
        assert_eq!(v["sockets"][1]["pid"], Value::Null);
        assert_eq!(v["sockets"][1]["process"], Value::Null);
        assert_eq!(states(&run("-l", d.path())), ["tcp:LISTEN", "udp:UNCONN"]);
        assert_eq!(states(&run("-lt", d.path())), ["tcp:LISTEN"]);
        assert_eq!(
            states(&run("-u", d.path())),
            ["udp:UNCONN", "udp:ESTABLISHED"]
        );
        assert_eq!(
            states(&run("-a -t", d.path())),
            [
                "tcp:LISTEN",
                "tcp:ESTABLISHED",
                "tcp:TIME_WAIT",
                "tcp:CLOSE_WAIT"
            ]
        );
    }

    #[test]
    fn missing_tables() {
        let d = fixture();
        // No tcp6/udp6 (IPv6 disabled): fine.
        assert!(answer(b"{}", d.path()).is_ok());
        fs::remove_file(d.path().join("net/udp")).unwrap();
        assert!(answer(br#"{"args":"-u"}"#, d.path()).is_err());
        let e = answer(br#"{"args":"-u"}"#, d.path()).unwrap_err();
        assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
        assert!(e.to_string().contains("net/udp"), "{e}");
        assert!(answer(b"{}", d.path()).is_ok(), "tcp is still there");
    }

    #[test]
    fn error_codes() {
        let d = fixture();
        let code = |req: &[u8]| answer(req, d.path()).unwrap_err().retcode();
        assert_eq!(code(b"[]"), retcode::INVALID_REQUEST);
        assert_eq!(code(br#"{"args":"-x"}"#), retcode::INVALID_PARAMS);
        assert_eq!(code(br#"{"args":"-l -a"}"#), retcode::INVALID_PARAMS);
        assert_eq!(code(br#"{"args":{}}"#), retcode::INVALID_PARAMS);
        let e = answer(br#"{"args":"-z"}"#, d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("-l") && e.contains("remote_address"), "{e}");
    }
}

//! Fuzzes the init reply / redirect decoder (`InitReply::parse`) and the
//! server-list parser behind it (`parse_server_list`, `parse_server_addr`).
//! Nothing may panic; every accepted address, written back with `Display`,
//! must parse to the same address.
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

use basicagent_proto::{parse_server_addr, parse_server_list, InitReply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, &[u8])| {
    let (port, data) = input;
    let port = port.max(1);
    let _ = InitReply::parse(data, port);
    if let Ok(text) = std::str::from_utf8(data) {
        let list = parse_server_list(text, port);
        for addr in &list.addrs {
            let written = addr.to_string();
            assert_eq!(
                parse_server_addr(&written, port).as_ref(),
                Ok(addr),
                "{addr:?} written as {written:?} does not parse back"
            );
        }
        let _ = parse_server_addr(text, port);
    }
});

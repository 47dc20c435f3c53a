//! The kit's own promises: loopback addresses that are distinct and
//! bindable, waits that return what they waited for, a PKI whose files
//! make working rustls configurations, agent configs with DNS off.

use std::net::TcpListener;
use std::time::Duration;

use basicagent_testsupport::wait::within;
use basicagent_testsupport::{
    free_addr_on, unique_ip, wait_for, AgentConfig, Dns, Pki, CLIENT_HOST_ID, NAME,
};

#[test]
fn unique_ips_are_distinct_loopback_addresses_that_bind() {
    let ips: Vec<String> = (0..300).map(|_| unique_ip()).collect();
    let mut sorted = ips.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ips.len(), "no address twice");
    for ip in ips.iter().step_by(37) {
        let addr: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(addr.is_loopback(), "{ip}");
        assert!(!ip.ends_with(".0") && !ip.ends_with(".255"), "{ip}");
        TcpListener::bind((ip.as_str(), 0)).unwrap_or_else(|e| panic!("{ip}: {e}"));
    }
    let a = free_addr_on(&ips[0]);
    assert_eq!(a.ip().to_string(), ips[0]);
    assert_ne!(a.port(), 0);
}

#[test]
fn waits_return_the_value_or_say_false() {
    let mut n = 0;
    let got = wait_for("the third poll", Duration::from_secs(60), || {
        n += 1;
        (n == 3).then_some(n * 10)
    });
    assert_eq!(got, 30);
    assert!(!within(Duration::from_millis(50), || false));
    assert!(within(Duration::from_secs(60), || true));
}

#[test]
#[should_panic(expected = "waiting for nothing")]
fn a_wait_that_never_holds_fails_naming_what() {
    wait_for("nothing", Duration::from_millis(10), || None::<()>);
}

#[test]
fn the_pki_makes_working_tls_configurations() {
    let pki = Pki::new();
    for stem in ["server", "wrongname", "otherca", "client", "host-client"] {
        for ext in ["pem", "key"] {
            assert!(pki.path(&format!("{stem}.{ext}")).exists(), "{stem}.{ext}");
        }
    }
    assert!(pki.path("ca.pem").exists() && pki.path("other-ca.pem").exists());
    // A handshake in memory: the client trusts the CA and the name.
    let server = pki.server_config("server");
    let client = pki.client_config_for(CLIENT_HOST_ID);
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let mut c = rustls::ClientConnection::new(client, name).unwrap();
    let mut s = rustls::ServerConnection::new(server).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut back = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut back).unwrap();
        }
        c.read_tls(&mut back.as_slice()).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() {
            return;
        }
    }
    panic!("the handshake did not complete");
}

#[test]
fn agent_configs_resolve_through_their_hosts_file_only() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::new(&pki, 4443, &["127.0.0.9", "127.0.0.10"]);
    let path = config.write(dir.path());
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("dns = false\n"), "{text}");
    assert!(!text.contains("nameservers"), "{text}");
    assert!(text.contains("port = 4443\n"), "{text}");
    let hosts = std::fs::read_to_string(dir.path().join("hosts")).unwrap();
    assert!(hosts.ends_with("127.0.0.9 config.cargo.com\n127.0.0.10 config.cargo.com\n"));
    let mut nx = config.clone();
    nx.dns = Dns::Nxdomain;
    let text = std::fs::read_to_string(nx.write(dir.path())).unwrap();
    assert!(text.contains("nameservers = [\"127.0.0.1:"), "{text}");
    assert!(!text.contains("dns = false"), "{text}");
}

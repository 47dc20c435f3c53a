//! The console's files from the real server binary: served at `/` without the token (the data stays behind it), strict policy headers, ETags, unknown files refused.

mod util;

use util::{Pki, Server};

const TOKEN: &str = "console-token-for-tests-0123";

fn get(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let url = format!("http://{}{path}", server.api.expect("no API"));
    let mut r = ureq::get(&url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let r = match r.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = r.status();
    let hs = r
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = r.header(&n).unwrap_or_default().to_owned();
            (n, v)
        })
        .collect();
    (status, hs, r.into_string().unwrap())
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn with_token() -> (Pki, Server) {
    let pki = Pki::new();
    let token_file = pki.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = Server::start(&pki, &["--api-token-file", token_file.to_str().unwrap()]);
    (pki, server)
}

#[test]
fn the_page_is_public_and_the_data_is_not() {
    let (_pki, server) = with_token();
    let (status, hs, body) = get(&server, "/", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("<title>BasicAgent console</title>"));
    assert!(header(&hs, "content-type")
        .unwrap()
        .starts_with("text/html"));
    let (status, _, body) = get(&server, "/v1/agents", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no_token"));
    // The script the page loads is there too, and the index under its name.
    let (status, hs, body) = get(&server, "/assets/app.js", &[]);
    assert_eq!(status, 200);
    assert!(header(&hs, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(body.contains("sessionStorage"));
    assert_eq!(get(&server, "/index.html", &[]).0, 200);
}

#[test]
fn every_console_response_has_the_strict_policy() {
    let (_pki, server) = with_token();
    for path in [
        "/",
        "/assets/app.js",
        "/assets/style.css",
        "/assets/icon.svg",
        "/assets/nope.js",
    ] {
        let (_, hs, _) = get(&server, path, &[]);
        let csp =
            header(&hs, "content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(
            header(&hs, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(header(&hs, "x-frame-options"), Some("DENY"), "{path}");
    }
}

#[test]
fn unknown_files_are_refused_and_the_server_keeps_serving() {
    let (_pki, server) = with_token();
    for path in [
        "/assets/nope.js",
        "/assets/..%2F..%2Fetc%2Fpasswd",
        "/assets/app.js.map",
    ] {
        let (status, _, body) = get(&server, path, &[]);
        assert_eq!(status, 404, "{path}");
        assert!(!body.contains("root:"), "{path}");
    }
    // Raw garbage at the page, then a normal request.
    let answer = server.raw_http(b"GET /\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert_eq!(get(&server, "/", &[]).0, 200);
}

#[test]
fn an_etag_lets_the_browser_revalidate() {
    let (_pki, server) = with_token();
    let (status, hs, _) = get(&server, "/assets/style.css", &[]);
    assert_eq!(status, 200);
    assert_eq!(header(&hs, "cache-control"), Some("no-cache"));
    let tag = header(&hs, "etag").unwrap().to_owned();
    let (status, hs, body) = get(&server, "/assets/style.css", &[("If-None-Match", &tag)]);
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert!(header(&hs, "content-security-policy").is_some());
    let (status, _, _) = get(
        &server,
        "/assets/style.css",
        &[("If-None-Match", "\"other\"")],
    );
    assert_eq!(status, 200);
}

#[test]
fn without_a_token_file_the_api_behind_the_console_is_open() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    assert_eq!(get(&server, "/", &[]).0, 200);
    let (status, _, body) = get(&server, "/v1/agents/count", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"count\":0"), "{body}");
}

fn post_call(server: &Server, headers: &[(&str, &str)]) -> (u16, String) {
    let url = format!("http://{}/v1/call", server.api.expect("no API"));
    let mut r = ureq::post(&url).set("Content-Type", "text/plain");
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let body = r#"{"target":{"all":true},"request":{"method":"sync.bash","cmd":"id"},"timeout":1}"#;
    match r.send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

#[test]
fn another_sites_page_cannot_call_through_the_operators_browser() {
    // No token: the case where a cross-site form post would otherwise run commands.
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    for h in [
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ][..],
        &[("Origin", "http://evil.example")][..],
        &[("Sec-Fetch-Site", "same-site")][..],
        &[("Origin", "null")][..],
    ] {
        let (status, body) = post_call(&server, h);
        assert_eq!(status, 403, "{h:?}: {body}");
        assert!(body.contains("cross_origin"), "{body}");
    }
    // A DNS name rebound to the loopback address: refused when no token is needed.
    let (status, body) = post_call(&server, &[("Host", "rebound.evil.example:8080")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("bad_host"), "{body}");
    // Nothing was called; the server keeps serving plain clients.
    let (status, body) = server.http("GET", "/v1/calls", None, None);
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, body) = post_call(&server, &[]);
    assert_eq!(status, 404, "no agent connected: {body}");
    assert!(body.contains("no_target"), "{body}");
    // The console's own requests pass.
    let api = server.api.unwrap().to_string();
    let origin = format!("http://{api}");
    let (status, body) = post_call(
        &server,
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(status, 404, "{body}");
    // A link from elsewhere to the console opens it.
    let (status, _, _) = get(
        &server,
        "/",
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "navigate"),
        ],
    );
    assert_eq!(status, 200);
}

#[test]
fn with_a_token_a_named_host_is_fine_but_other_sites_are_not() {
    let (_pki, server) = with_token();
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = post_call(
        &server,
        &[("Host", "api.example:8080"), ("Authorization", &auth)],
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no_target"), "{body}");
    let (status, body) = post_call(
        &server,
        &[("Origin", "http://evil.example"), ("Authorization", &auth)],
    );
    assert_eq!(status, 403, "{body}");
}

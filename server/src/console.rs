//! The operator console: a dependency-free single-page app (server/console/) embedded in the binary, served at `/` and `/assets/...`.
//!
//! Key decisions: the files are compiled in (`include_bytes!`), so the
//! console is always the one of this binary and needs no files on disk.
//! These routes are outside the API's token check: the page itself holds no
//! data, it asks for the token and then talks only to the API (`/v1/...`)
//! with it, like any other client. Every response carries a strict
//! Content-Security-Policy (own origin only: no inline script or style, no
//! external fetch, no framing, no form posts) and an ETag, so a browser
//! revalidates instead of keeping an old console after an upgrade.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The policy on every console response (see docs/console.md).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../console/index.html"),
};

/// Files under `/assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../console/icon.svg"),
    },
];

/// The console's routes, to be merged into the API router (outside its token layer).
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => with_policy(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "no such console file\n",
            )
                .into_response(),
        ),
    }
}

/// FNV-1a over the file: a stable validator for this build's copy.
fn etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let tag = etag(asset.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_policy(r)
}

/// Adds the security headers every console response carries.
fn with_policy(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// Why a browser request was refused by [`browser_guard`].
fn refusal(method: &Method, headers: &HeaderMap, open: bool) -> Option<(&'static str, String)> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or("");
    // Fetch metadata (every current browser): only the console's own pages,
    // an address typed by the operator, or a link followed to a page (a
    // GET whose answer goes to the operator's tab, not to the other site).
    let navigation = (method == Method::GET || method == Method::HEAD)
        && headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok()) == Some("navigate");
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" && !navigation {
            return Some((
                "cross_origin",
                format!("a request from another site ({site}) is refused"),
            ));
        }
    }
    if let Some(origin) = text(header::ORIGIN).filter(|_| !navigation) {
        if origin != format!("http://{host}") && origin != format!("https://{host}") {
            return Some((
                "cross_origin",
                format!("a request from origin {origin:?} is refused on host {host:?}"),
            ));
        }
    }
    // Without a token anyone who can reach the address may call; a browser
    // page could, through a DNS name rebound to 127.0.0.1. Only an address
    // or `localhost` as the Host keeps such a page out.
    if open && !loopback_host(host) {
        return Some((
            "bad_host",
            format!(
                "an API without a token answers only to an IP address or localhost, not {host:?}"
            ),
        ));
    }
    None
}

/// `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`, `myhost` (an address
/// literal or a single-label name, any port): not a name under a public
/// domain, which is what a rebinding page needs (it controls that DNS).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    !name.contains('.') || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Middleware on the whole API address: refuses what a hostile web page in
/// the operator's browser could send (a cross-site form or `fetch`, a DNS
/// rebinding when no token is needed). Clients that are not browsers send
/// neither `Origin` nor `Sec-Fetch-Site` and use an address: not affected.
/// `open`: the API needs no token.
pub async fn browser_guard(State(open): State<bool>, req: Request, next: Next) -> Response {
    match refusal(req.method(), req.headers(), open) {
        None => next.run(req).await,
        Some((code, message)) => with_policy(
            (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
            )
                .into_response(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hosts() {
        assert!(loopback_host("127.0.0.1:8080"));
        assert!(loopback_host("10.1.2.3"));
        assert!(loopback_host("[::1]:8080"));
        assert!(loopback_host("LocalHost:80"));
        assert!(!loopback_host("evil.example:8080"));
        assert!(!loopback_host("[::1"));
        assert!(!loopback_host("localhost.evil.example"));
        assert!(!loopback_host("127.0.0.1.nip.example:80"));
        assert!(loopback_host("x"));
        assert!(loopback_host(""));
    }

    #[test]
    fn browser_requests() {
        let ok = |h: &[(&'static str, &'static str)], open| {
            refusal(&Method::POST, &headers(h), open).is_none()
        };
        // curl, ureq: no browser headers.
        assert!(ok(&[("host", "127.0.0.1:8080")], true));
        assert!(ok(&[("host", "api.example:8080")], false));
        // The console itself.
        assert!(ok(
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin")
            ],
            true
        ));
        assert!(ok(
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "none")],
            true
        ));
        // Another site's page.
        assert!(!ok(
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
            false
        ));
        assert!(!ok(
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")],
            false
        ));
        assert!(!ok(
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example")
            ],
            false
        ));
        assert!(!ok(
            &[("host", "127.0.0.1:8080"), ("origin", "null")],
            false
        ));
        // DNS rebinding: same origin, but a name.
        assert!(!ok(
            &[
                ("host", "evil.example:8080"),
                ("origin", "http://evil.example:8080"),
                ("sec-fetch-site", "same-origin")
            ],
            true
        ));
        assert!(ok(
            &[
                ("host", "evil.example:8080"),
                ("origin", "http://evil.example:8080")
            ],
            false
        ));
    }

    #[test]
    fn etags_differ_by_content() {
        assert_eq!(etag(b"a"), etag(b"a"));
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"").len(), 18);
    }

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        let page = std::str::from_utf8(INDEX.body).unwrap_or_default();
        for a in ASSETS {
            assert!(
                page.contains(&format!("/assets/{}", a.name)),
                "index.html does not use /assets/{}",
                a.name
            );
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_external_url() {
        for a in std::iter::once(&INDEX).chain(ASSETS) {
            let text = std::str::from_utf8(a.body).unwrap_or_default();
            for bad in ["http://", "https://", "//cdn", "@import", "url(http"] {
                // The SVG's xmlns is the only URL allowed (a name, never fetched).
                let hits = text.matches(bad).count()
                    - text.matches("http://www.w3.org/2000/svg").count()
                        * (bad == "http://") as usize;
                assert_eq!(hits, 0, "{} contains {bad:?}", a.name);
            }
        }
        let page = std::str::from_utf8(INDEX.body).unwrap_or_default();
        assert!(!page.contains("<style"), "inline <style> in index.html");
        assert!(
            !page.contains(" style="),
            "inline style attribute in index.html"
        );
        // An inline handler (` onclick=`): ` on` then letters then `=`.
        let handler = page.match_indices(" on").any(|(i, _)| {
            let rest = &page[i + 3..];
            let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            letters > 0 && rest[letters..].starts_with('=')
        });
        assert!(!handler, "inline event handler in index.html");
        assert!(
            !page.contains("<script>"),
            "inline <script> in index.html (CSP forbids it)"
        );
    }
}

//! What wsgate is for, in a real browser: headless Chromium against a real Envoy with wsgate in
//! front of the echo upstream.
//!
//! Two pages of one site: `http://127.0.0.1:<A>/`, the origin wsgate allows, and
//! `http://127.0.0.1:<B>/`, another origin of the same site (cookies belong to a host, not a
//! port, so `SameSite=Lax` cookies are attached between them, as between sibling subdomains).
//! Envoy has two listeners in front of the same upstream: `guarded`, with wsgate, and `open`,
//! without, which shows what the browser does when nothing checks.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use support::browser::Browser;
use support::{bootstrap_yaml, build, http_filters_yaml, listener_yaml, Build, Envoy, Recorder};

const ROUTER_ONLY: &str = r#"
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(exp: u64) -> String {
    support::hs256_token(json!({"iss": "https://issuer.example", "aud": "chat", "sub": "alice", "exp": exp}))
}

/// The Kubernetes convention for a bearer token in a subprotocol.
const K8S: &str = "base64url.bearer.authorization.k8s.io.";

/// wsgate's configuration: `/cookie` takes the credential from the `ws_token` cookie and
/// closes the socket when it expires (and checks engine.io polling under it), `/first` from the
/// first message; only `allowed` may open
/// either. `/own` may be opened by a page served through the same listener (`same_origin`).
/// `/bare` and `/marked` take it from a subprotocol, `/marked` with the marker `wsgate`.
fn config(allowed: &str) -> String {
    let mut jwt = support::hs256_jwt();
    jwt["leeway_seconds"] = json!(0);
    json!({
        "stat_prefix": "browser",
        "policies": [
            {"name": "cookie", "match": {"path_prefix": "/cookie"}, "allowed_origins": [allowed],
             "require_tls": false,
             "also_check": [{"path_prefix": "/cookie/socket.io", "query": "transport=polling"}],
             "close_on_expiry": true,
             "auth": {"sources": [{"cookie": "ws_token"}], "jwt": jwt}},
            {"name": "first", "match": {"path_prefix": "/first"}, "allowed_origins": [allowed],
             "require_tls": false,
             "auth": {"sources": [{"first_message": {"token_pointer": "/token", "type_pointer": "/type",
                                                      "type_value": "auth"}}],
                      "jwt": jwt}},
            {"name": "own", "match": {"path_prefix": "/own"}, "allowed_origins": ["same_origin"],
             "require_tls": false},
            {"name": "bare", "match": {"path_prefix": "/bare"}, "allowed_origins": [allowed],
             "require_tls": false,
             "auth": {"sources": [{"subprotocol": K8S}], "jwt": jwt}},
            {"name": "marked", "match": {"path_prefix": "/marked"}, "allowed_origins": [allowed],
             "require_tls": false,
             "auth": {"sources": [{"subprotocol": K8S, "marker": "wsgate"}], "jwt": jwt}}
        ],
        "default": {"allowed_origins": [allowed], "require_tls": false}
    })
    .to_string()
}

/// The pages, Envoy, the upstream and the browser of one test.
struct Site {
    /// The allowed page's origin and the other page's.
    allowed: String,
    other: String,
    guarded: u16,
    open: u16,
    upstream: Recorder,
    /// The upstream itself, a host of its own (another port) for the CSP.
    upstream_addr: std::net::SocketAddr,
    envoy: Envoy,
    browser: Browser,
}

impl Site {
    async fn start() -> Site {
        // The pages are the echo server's plain-text answers; the script is the test's.
        let allowed = wsgate_echo::start("127.0.0.1:0", Recorder::discarding()).await.unwrap();
        let other = wsgate_echo::start("127.0.0.1:0", Recorder::discarding()).await.unwrap();
        let allowed = format!("http://{allowed}");
        let upstream = Recorder::default();
        let upstream_addr = wsgate_echo::start("127.0.0.1:0", upstream.clone()).await.unwrap();
        let config = config(&allowed);
        let open =
            listener_yaml("open", 0, &config, None).replace(&http_filters_yaml("open", &config), ROUTER_ONLY);
        let envoy = Envoy::start(&bootstrap_yaml(
            &[listener_yaml("guarded", 0, &config, None), open],
            upstream_addr,
            0,
        ));
        Site {
            allowed,
            other: format!("http://{other}"),
            guarded: envoy.listener_port("guarded"),
            open: envoy.listener_port("open"),
            upstream,
            upstream_addr,
            envoy,
            browser: Browser::start().await,
        }
    }

    /// The allowed page, with the user logged in: a `SameSite=Lax` cookie holding `token`.
    async fn log_in(&mut self, token: &str) {
        self.browser.open(&format!("{}/", self.allowed)).await;
        self.browser.eval(&format!(r#"document.cookie = "ws_token={token}; SameSite=Lax; path=/""#)).await;
    }

    fn upgrades(&self) -> Vec<support::SeenRequest> {
        self.upstream.requests().into_iter().filter(|request| request.is_upgrade()).collect()
    }
}

/// The close code and reason a page sees when wsgate ends its socket for `reason`: the native
/// build sends a close frame; proxy-wasm cannot, so the browser reports an abnormal closure.
fn closed_for(reason: &str) -> (Value, Value) {
    match build() {
        Build::Native => (json!(1008), json!(format!("wsgate: {reason}"))),
        Build::Wasm => (json!(1006), json!("")),
    }
}

#[tokio::test]
async fn a_page_on_the_allowed_origin_opens_a_socket_with_its_cookie_and_the_upstream_never_sees_it() {
    let mut site = Site::start().await;
    let token = token(now() + 300);
    site.log_in(&token).await;

    let url = format!("ws://127.0.0.1:{}/cookie", site.guarded);
    let seen = site.browser.socket(&url, &["hello"], 1).await;

    assert_eq!(seen["opened"], true, "{seen}");
    assert_eq!(seen["messages"], json!(["hello"]));
    let upgrades = site.upgrades();
    assert_eq!(upgrades.len(), 1);
    assert_eq!(upgrades[0].header_values("origin"), vec![site.allowed.as_str()]);
    assert!(
        !format!("{:?}", upgrades[0]).contains(&token),
        "the token reached the upstream: {:?}",
        upgrades[0]
    );
}

#[tokio::test]
async fn a_page_on_the_allowed_origin_logs_in_with_its_first_message() {
    let mut site = Site::start().await;
    site.browser.open(&format!("{}/", site.allowed)).await;

    let url = format!("ws://127.0.0.1:{}/first", site.guarded);
    let auth = json!({"type": "auth", "token": token(now() + 300)}).to_string();
    let seen = site.browser.socket(&url, &[&auth, "hello"], 1).await;

    assert_eq!(seen["opened"], true, "{seen}");
    assert_eq!(seen["messages"], json!(["hello"]), "the upstream echoed the auth message: {seen}");
    assert_eq!(site.upstream.sockets()[0].messages, vec!["hello".to_string()]);
}

#[tokio::test]
async fn a_page_on_another_origin_of_the_site_is_refused_with_the_victims_cookie_before_the_upstream() {
    let mut site = Site::start().await;
    site.log_in(&token(now() + 300)).await;
    site.browser.open(&format!("{}/", site.other)).await;

    let url = format!("ws://127.0.0.1:{}/cookie", site.guarded);
    let seen = site.browser.socket(&url, &["hello"], 1).await;

    assert_eq!(seen["opened"], false, "{seen}");
    assert_eq!(seen["code"], 1006);
    assert!(site.upgrades().is_empty(), "the upstream saw {:?}", site.upgrades());
    assert_eq!(site.envoy.stat("wasmcustom.wsgate.browser.denied.origin_not_allowed"), Some(1));
}

#[tokio::test]
async fn without_wsgate_the_same_page_rides_the_victims_cookie_into_the_upstream() {
    let mut site = Site::start().await;
    let token = token(now() + 300);
    site.log_in(&token).await;
    site.browser.open(&format!("{}/", site.other)).await;

    let url = format!("ws://127.0.0.1:{}/cookie", site.open);
    let seen = site.browser.socket(&url, &["hijacked"], 1).await;

    assert_eq!(seen["opened"], true, "{seen}");
    assert_eq!(seen["messages"], json!(["hijacked"]));
    let upgrades = site.upgrades();
    assert_eq!(upgrades[0].header_values("origin"), vec![site.other.as_str()]);
    assert_eq!(upgrades[0].header_values("cookie"), vec![format!("ws_token={token}").as_str()]);
}

#[tokio::test]
async fn wsgates_content_security_policy_makes_the_browser_refuse_a_socket_outside_connect_src() {
    let mut site = Site::start().await;
    // A page served through wsgate gets its default policy, `connect-src 'self'`.
    site.browser.open(&format!("http://127.0.0.1:{}/page", site.guarded)).await;

    let elsewhere = format!("ws://{}/ws", site.upstream_addr);
    let seen = site.browser.socket(&elsewhere, &["hello"], 1).await;

    assert_eq!(seen["opened"], false, "{seen}");
    assert_eq!(seen["violations"], json!([elsewhere]));
    assert!(site.upgrades().is_empty(), "the upstream saw {:?}", site.upgrades());
}

#[tokio::test]
async fn a_page_without_wsgates_policy_may_open_the_same_socket() {
    let mut site = Site::start().await;
    site.browser.open(&format!("http://127.0.0.1:{}/page", site.open)).await;

    let elsewhere = format!("ws://{}/ws", site.upstream_addr);
    let seen = site.browser.socket(&elsewhere, &["hello"], 1).await;

    assert_eq!(seen["violations"], json!([]));
    assert_eq!(seen["messages"], json!(["hello"]));
}

#[tokio::test]
async fn a_refused_first_message_closes_the_pages_socket_with_the_code_the_build_can_send() {
    let mut site = Site::start().await;
    site.browser.open(&format!("{}/", site.allowed)).await;
    // The signature's first character changed: still base64url, no longer the signature.
    let valid = token(now() + 300);
    let (signed, signature) = valid.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{first}{}", &signature[1..]);

    let url = format!("ws://127.0.0.1:{}/first", site.guarded);
    let auth = json!({"type": "auth", "token": forged}).to_string();
    let seen = site.browser.socket(&url, &[&auth], 1).await;

    assert_eq!(seen["opened"], true, "{seen}");
    assert_eq!((seen["code"].clone(), seen["reason"].clone()), closed_for("token_bad_signature"), "{seen}");
    assert_eq!(site.upstream.sockets()[0].bytes, 0);
}

#[tokio::test]
async fn a_socket_closed_at_its_tokens_expiry_tells_the_page_the_code_the_build_can_send() {
    let mut site = Site::start().await;
    site.log_in(&token(now() + 3)).await;

    let url = format!("ws://127.0.0.1:{}/cookie", site.guarded);
    let seen = site.browser.socket(&url, &[], 0).await;

    assert_eq!(seen["opened"], true, "{seen}");
    assert_eq!((seen["code"].clone(), seen["reason"].clone()), closed_for("closed_expired"), "{seen}");
}

#[tokio::test]
async fn same_origin_admits_a_page_served_through_the_same_listener_and_no_other() {
    let mut site = Site::start().await;
    let own = format!("ws://127.0.0.1:{}/own", site.guarded);
    site.browser.open(&format!("http://127.0.0.1:{}/page", site.guarded)).await;
    let seen = site.browser.socket(&own, &["hello"], 1).await;
    assert_eq!(seen["messages"], json!(["hello"]), "{seen}");

    site.browser.open(&format!("{}/", site.other)).await;
    let seen = site.browser.socket(&own, &["hello"], 1).await;
    assert_eq!(seen["opened"], false, "{seen}");
    assert_eq!(site.upgrades().len(), 1, "the upstream saw {:?}", site.upgrades());
}

/// The subprotocol that carries `token` (base64url, no padding).
fn token_protocol(token: &str) -> String {
    use base64ct::Encoding;
    format!("{K8S}{}", base64ct::Base64UrlUnpadded::encode_string(token.as_bytes()))
}

#[tokio::test]
async fn a_page_offering_only_its_credential_as_a_subprotocol_is_failed_by_the_browser_itself() {
    let mut site = Site::start().await;
    site.browser.open(&format!("{}/", site.allowed)).await;
    let protocol = token_protocol(&token(now() + 300));

    let url = format!("ws://127.0.0.1:{}/bare", site.guarded);
    let seen = site.browser.socket_with(&url, &[&protocol], &["hello"], 1).await;

    // wsgate admitted it and the upstream accepted it, selecting no protocol, which a browser
    // that offered one refuses.
    assert_eq!(site.upgrades().len(), 1);
    assert_eq!(seen["opened"], false, "{seen}");
    assert_eq!(seen["code"], 1006);
}

#[tokio::test]
async fn with_the_marker_offered_beside_the_credential_the_page_opens_its_socket() {
    let mut site = Site::start().await;
    site.browser.open(&format!("{}/", site.allowed)).await;
    let protocol = token_protocol(&token(now() + 300));

    let url = format!("ws://127.0.0.1:{}/marked", site.guarded);
    let seen = site.browser.socket_with(&url, &["wsgate", &protocol], &["hello"], 1).await;

    assert_eq!(seen["opened"], true, "{seen}");
    assert_eq!(seen["protocol"], "wsgate");
    assert_eq!(seen["messages"], json!(["hello"]));
    assert_eq!(site.upgrades()[0].header_values("sec-websocket-protocol"), Vec::<&str>::new());
}

/// A page's poll, as engine.io's client sends it: a GET with the page's cookies, from another
/// origin too. The page cannot read a cross-origin answer, but the request is made.
async fn poll(browser: &mut Browser, url: &str) {
    let script = format!(
        "fetch({}, {{credentials: 'include'}}).then(() => 'answered', () => 'unreadable')",
        serde_json::to_string(url).unwrap()
    );
    browser.eval(&script).await;
}

#[tokio::test]
async fn a_page_on_another_origin_polling_with_the_victims_cookie_is_refused_before_the_upstream() {
    let mut site = Site::start().await;
    site.log_in(&token(now() + 300)).await;
    site.browser.open(&format!("{}/", site.other)).await;

    poll(
        &mut site.browser,
        &format!("http://127.0.0.1:{}/cookie/socket.io/?EIO=4&transport=polling", site.guarded),
    )
    .await;

    assert!(site.upstream.requests().is_empty(), "the upstream saw {:?}", site.upstream.requests());
    assert_eq!(site.envoy.stat("wasmcustom.wsgate.browser.denied.origin_not_allowed"), Some(1));
}

#[tokio::test]
async fn without_wsgate_the_same_poll_rides_the_victims_cookie_into_the_upstream() {
    let mut site = Site::start().await;
    let token = token(now() + 300);
    site.log_in(&token).await;
    site.browser.open(&format!("{}/", site.other)).await;

    poll(
        &mut site.browser,
        &format!("http://127.0.0.1:{}/cookie/socket.io/?EIO=4&transport=polling", site.open),
    )
    .await;

    let seen = site.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header_values("origin"), vec![site.other.as_str()]);
    assert_eq!(seen[0].header_values("cookie"), vec![format!("ws_token={token}").as_str()]);
}

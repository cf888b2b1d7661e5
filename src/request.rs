//! The request facts the core decides on, built by the shell from the host's header map and
//! connection.

/// A request's headers as Envoy hands them to the filter: names lower-case, one entry per
/// header line (Envoy keeps repeated `Cookie` lines apart and joins repeated `Origin` lines
/// with a comma), values as raw bytes because a header value need not be UTF-8.
#[derive(Clone, Debug, Default)]
pub struct Request {
    headers: Vec<(String, Vec<u8>)>,
    tls: bool,
    /// The downstream address as Envoy resolved it, when the host was asked for it.
    client: Option<String>,
}

impl Request {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Request {
        Request { headers, tls: false, client: None }
    }

    /// Records the downstream address (`ip:port`) as Envoy resolved it: its connection's peer,
    /// or what the connection manager's `use_remote_address` and `xff_num_trusted_hops` made of
    /// `x-forwarded-for`; never a header the filter reads itself.
    pub fn with_client(self, address: Option<String>) -> Request {
        Request { client: address, ..self }
    }

    pub fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// Records whether the downstream connection is TLS, as the host knows it. Not `:scheme`:
    /// Envoy derives that from a client's own `x-forwarded-proto` unless the connection manager
    /// has `use_remote_address: true`, so a plaintext client can make it say `https`.
    pub fn with_tls(self, tls: bool) -> Request {
        Request { tls, ..self }
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Whether `x-forwarded-proto` says `https`: exactly one line holding exactly that token. A
    /// list (`https, http`) is not taken as proof.
    pub fn forwarded_https(&self) -> bool {
        let mut lines = self.values("x-forwarded-proto");
        matches!((lines.next(), lines.next()), (Some(value), None) if value.trim_ascii().eq_ignore_ascii_case(b"https"))
    }

    /// Whether `:scheme` is `https`: as Envoy passes it on, from the connection or, unless the
    /// connection manager has `use_remote_address`, the client's `x-forwarded-proto`. Good for
    /// what a browser ignores over plaintext anyway (HSTS); never for a security decision.
    pub fn scheme_is_https(&self) -> bool {
        self.values(":scheme").next().is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"https"))
    }

    /// Every value of header `name` (given in lower case), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// Every header name, once per line, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|(name, _)| name.as_str())
    }

    /// The request target (`:path`), query string included; empty if there is none.
    pub fn path(&self) -> &[u8] {
        self.values(":path").next().unwrap_or_default()
    }

    /// Whether this request asks to switch protocols: an `Upgrade` header naming a protocol,
    /// and a `Connection` header that lists the token `upgrade`. Both are comma-separated,
    /// case-insensitive token lists read over every header line (RFC 9110 sections 7.6.1 and
    /// 7.8), whatever the method, path or protocol named. This is Envoy's own rule, so the
    /// filter sees as an upgrade exactly what Envoy will upgrade: browsers send
    /// `Connection: keep-alive, Upgrade` and `Upgrade: websocket`, other clients
    /// `Upgrade: WebSocket`. HTTP/2 extended CONNECT (RFC 8441) reaches the filter in this
    /// HTTP/1 form too.
    pub fn is_upgrade(&self) -> bool {
        let mut upgrade = self.tokens("upgrade");
        upgrade.next().is_some() && self.tokens("connection").any(|t| t.eq_ignore_ascii_case(b"upgrade"))
    }

    /// The non-empty comma-separated tokens of every line of header `name`, trimmed.
    fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values(name)
            .flat_map(|value| value.split(|&b| b == b','))
            .map(|token| token.trim_ascii())
            .filter(|token| !token.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request::new(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect())
    }

    #[test]
    fn the_browser_form_of_an_upgrade_is_an_upgrade() {
        let r = request(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert!(r.is_upgrade());
    }

    #[test]
    fn token_lists_are_read_case_insensitively_over_every_line() {
        let r =
            request(&[("connection", "keep-alive"), ("connection", " UPGRADE "), ("upgrade", "WebSocket")]);
        assert!(r.is_upgrade());
    }

    #[test]
    fn an_upgrade_header_without_the_connection_token_is_not_an_upgrade() {
        assert!(!request(&[("upgrade", "websocket"), ("connection", "keep-alive")]).is_upgrade());
        assert!(!request(&[("upgrade", "websocket")]).is_upgrade());
    }

    #[test]
    fn a_connection_token_that_only_contains_upgrade_does_not_count() {
        let r = request(&[("connection", "upgraded, x-upgrade"), ("upgrade", "websocket")]);
        assert!(!r.is_upgrade());
    }

    #[test]
    fn an_empty_upgrade_header_is_not_an_upgrade() {
        assert!(!request(&[("connection", "upgrade"), ("upgrade", " , ")]).is_upgrade());
    }

    #[test]
    fn only_a_single_https_token_counts_as_forwarded_https() {
        assert!(request(&[("x-forwarded-proto", "HTTPS")]).forwarded_https());
        assert!(!request(&[("x-forwarded-proto", "http")]).forwarded_https());
        assert!(!request(&[("x-forwarded-proto", "https, http")]).forwarded_https());
        assert!(!request(&[("x-forwarded-proto", "https"), ("x-forwarded-proto", "https")]).forwarded_https());
        assert!(!request(&[]).forwarded_https());
    }

    #[test]
    fn the_path_is_read_from_the_pseudo_header() {
        assert_eq!(request(&[(":path", "/ws?x=1")]).path(), b"/ws?x=1");
        assert_eq!(request(&[]).path(), b"");
    }
}

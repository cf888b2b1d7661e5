//! End-to-end harness: a real Envoy with the built wsgate module in front of our echo upstream.
//!
//! Every server listens on 127.0.0.1 on a port found free at run time. Envoy is a child process
//! stopped by PID when its handle drops, pass or fail; on a failing test its log is printed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod browser;
pub mod client;
#[path = "../common/mod.rs"]
pub mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use wsgate_echo::{Recorder, SeenRequest};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$WSGATE_ENVOY`, or the one `make` installs into `.venv`.
pub fn envoy_bin() -> PathBuf {
    let path =
        std::env::var_os("WSGATE_ENVOY").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "no Envoy at {}: run the tests with `make test`, which installs it",
        path.display()
    );
    path
}

/// The built module: `$WSGATE_WASM`, or the release build `make build` writes.
pub fn wasm_path() -> PathBuf {
    built("WSGATE_WASM", "target/wasm32-wasip1/release/wsgate.wasm")
}

/// A build output: the path in `$variable`, or `default` under the repository.
fn built(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| repo().join(default));
    assert!(
        path.exists(),
        "no module at {}: run the tests with `make test`, which builds it",
        path.display()
    );
    path
}

/// Which build of wsgate the tests put in front of the upstream: `WSGATE_BUILD=native` for the
/// dynamic module, else the proxy-wasm module. The same tests run against each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Native,
}

pub fn build() -> Build {
    match std::env::var("WSGATE_BUILD").as_deref() {
        Ok("native") => Build::Native,
        Ok("wasm") | Err(_) => Build::Wasm,
        Ok(other) => panic!("WSGATE_BUILD={other:?}: \"wasm\" or \"native\""),
    }
}

/// The built dynamic module: `$WSGATE_MODULE`, or the build `make build` writes.
pub fn module_path() -> PathBuf {
    built("WSGATE_MODULE", "target/module/libwsgate_module.so")
}

/// A port that was free a moment ago on 127.0.0.1: only for configs that are validated, never
/// bound (a running Envoy gets port 0 and binds a free one itself).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh scratch folder for one Envoy's config and log.
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("wsgate-e2e-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A certificate and key for a TLS listener, as files.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The connection-manager settings that the configs under `envoy/` ship (README, "What wsgate
/// assumes about the upstream"), as YAML lines of a listener's `typed_config`.
pub const HARDENED: &str = r#"
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
          strip_trailing_host_dot: true
          common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}"#;

/// The YAML of one HTTP listener with wsgate (plugin config `plugin_json`) before the router,
/// over TLS if `tls` is given. `/envoy-404` is answered by Envoy itself.
pub fn listener_yaml(name: &str, port: u16, plugin_json: &str, tls: Option<&TlsFiles>) -> String {
    listener_yaml_with(name, port, plugin_json, tls, "")
}

/// [`listener_yaml`] with further connection-manager settings (YAML lines of its
/// `typed_config`, such as [`HARDENED`] or an access log).
pub fn listener_yaml_with(
    name: &str,
    port: u16,
    plugin_json: &str,
    tls: Option<&TlsFiles>,
    connection_manager: &str,
) -> String {
    let transport = match tls {
        None => String::new(),
        Some(files) => format!(
            r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}]"#,
            files.cert.display(),
            files.key.display()
        ),
    };
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {transport}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}{connection_manager}
          codec_type: AUTO
          upgrade_configs: [{{upgrade_type: websocket}}]
          http2_protocol_options: {{allow_connect: true}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{match: {{prefix: "/envoy-404"}}, direct_response: {{status: 404}}}}
              - {{match: {{prefix: "/"}}, route: {{cluster: upstream}}}}
          http_filters:{filters}
"#,
        filters = http_filters_yaml(name, plugin_json)
    )
}

/// The `http_filters` of a connection manager (YAML, at a listener's indentation): wsgate, with
/// plugin config `plugin_json` and failing closed, then the router.
pub fn http_filters_yaml(name: &str, plugin_json: &str) -> String {
    if build() == Build::Native {
        return native_filters_yaml(&module_path(), plugin_json);
    }
    format!(
        r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: wsgate-{name}
                root_id: wsgate
                failure_policy: FAIL_CLOSED
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {value}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
                  environment_variables:
                    key_values: {{WSGATE_TEST_HS_SECRET: "{secret}"}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#,
        value = serde_json::to_string(plugin_json).unwrap(),
        wasm = wasm_path().display(),
        secret = hmac_secret()
    )
}

/// [`http_filters_yaml`] for the dynamic module. Its counters are put under the wasm build's
/// prefix, so that both builds' stats have the same names.
pub fn native_filters_yaml(module: &Path, plugin_json: &str) -> String {
    format!(
        r#"
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                module: {{local: {{filename: {module}}}}}
                metrics_namespace: wasmcustom
              filter_name: wsgate
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {value}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#,
        value = serde_json::to_string(plugin_json).unwrap(),
        module = module.display(),
    )
}

/// A plaintext listener (see [`listener_yaml`]) whose wsgate is the dynamic module at `module`,
/// whatever the build under test.
pub fn module_listener_yaml(name: &str, module: &Path, plugin_json: &str) -> String {
    listener_yaml(name, 0, plugin_json, None)
        .replace(&http_filters_yaml(name, plugin_json), &native_filters_yaml(module, plugin_json))
}

/// The test HMAC secret (base64url), which every test VM finds in `WSGATE_TEST_HS_SECRET`.
pub fn hmac_secret() -> String {
    std::fs::read_to_string(repo().join("tests/keys/hmac.secret")).unwrap().trim().to_string()
}

/// The `auth.jwt` of a test config that takes [`hs256_token`]s: issuer
/// `https://issuer.example`, audience `chat`.
pub fn hs256_jwt() -> serde_json::Value {
    serde_json::json!({
        "algorithms": ["HS256"],
        "jwks": {"keys": [{"kty": "oct", "kid": "hmac-env", "k_env": "WSGATE_TEST_HS_SECRET"}]},
        "issuers": ["https://issuer.example"],
        "audiences": ["chat"]
    })
}

/// A JWT signed with HS256 by the test secret (`kid` `hmac-env`, which the configs read from
/// `WSGATE_TEST_HS_SECRET`).
pub fn hs256_token(claims: serde_json::Value) -> String {
    use base64ct::Encoding;
    let secret = base64ct::Base64UrlUnpadded::decode_vec(&hmac_secret()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hmac-env".to_string());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap()
}

/// A whole bootstrap: the given listeners, an `upstream` cluster at `upstream`, an admin port.
pub fn bootstrap_yaml(listeners: &[String], upstream: SocketAddr, admin_port: u16) -> String {
    bootstrap_yaml_with(listeners, upstream, &[], admin_port)
}

/// [`bootstrap_yaml`] with further plaintext clusters, by name and address.
pub fn bootstrap_yaml_with(
    listeners: &[String],
    upstream: SocketAddr,
    clusters: &[(&str, SocketAddr)],
    admin_port: u16,
) -> String {
    let clusters: String = clusters
        .iter()
        .map(|(name, address)| {
            format!(
                r#"
  - name: {name}
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]"#,
                ip = address.ip(),
                port = address.port()
            )
        })
        .collect();
    format!(
        r#"static_resources:
  listeners:{listeners}
  clusters:
  - name: upstream
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]{clusters}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}{runtime}
"#,
        runtime = match build() {
            Build::Wasm => "",
            // Prometheus names without the stats prefix, as Envoy gives the wasm build's.
            Build::Native => NATIVE_RUNTIME,
        },
        listeners = listeners.concat(),
        ip = upstream.ip(),
        port = upstream.port()
    )
}

/// The runtime the dynamic module's shipped configs set (`envoy/dynamic-module/envoy.yaml`).
pub const NATIVE_RUNTIME: &str = r#"
layered_runtime:
  layers:
  - name: static
    static_layer: {envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix: true}"#;

/// A running Envoy. Dropping it kills the process; a failing test also gets its log printed.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// Further scratch folders that live as long as this Envoy.
    others: Vec<PathBuf>,
    pub admin_port: u16,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` and waits until its admin says it is ready. Give the admin
    /// and the listeners port 0: Envoy binds free ports itself, so that no other process can
    /// take a port between its choice and its use; [`Envoy::listener_port`] tells them.
    pub fn start(bootstrap: &str) -> Envoy {
        Envoy::start_workers(bootstrap, 1)
    }

    /// [`Envoy::start`] with `workers` worker threads (`--concurrency`).
    pub fn start_workers(bootstrap: &str, workers: usize) -> Envoy {
        let dir = scratch_dir();
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let admin_address = dir.join("admin-address");
        let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_address)
            .args(["--concurrency", &workers.to_string(), "--disable-hot-restart", "-l", "info"])
            // Access logs written to files reach them within 100 ms, not Envoy's default 10 s.
            .args(["--file-flush-interval-msec", "100"])
            // What the wasm build's VMs get in their configuration, the module from the process.
            .env("WSGATE_TEST_HS_SECRET", hmac_secret())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut envoy = Envoy { child, dir, others: Vec::new(), admin_port: 0 };
        envoy.wait_ready(&admin_address);
        envoy
    }

    /// The port a listener of this Envoy is bound to, by the listener's name.
    pub fn listener_port(&self, name: &str) -> u16 {
        let listeners = self.admin_get("/listeners?format=json").expect("the admin's /listeners");
        let listeners: serde_json::Value = serde_json::from_str(&listeners).unwrap();
        let status = listeners["listener_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|status| status["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name}: {listeners}"));
        u16::try_from(status["local_address"]["socket_address"]["port_value"].as_u64().unwrap()).unwrap()
    }

    /// The Envoy process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of one admin stat, if Envoy has it.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))?;
        stats.lines().find_map(|line| line.strip_prefix(&format!("{name}: ")))?.trim().parse().ok()
    }

    /// Removes `dir` when this Envoy stops.
    pub fn also_remove(&mut self, dir: PathBuf) {
        self.others.push(dir);
    }

    fn wait_ready(&mut self, admin_address: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("Envoy exited during start-up ({status}):\n{}", self.log());
            }
            if self.admin_port == 0 {
                // Envoy writes "127.0.0.1:<port>" once its admin listens.
                let address = std::fs::read_to_string(admin_address).unwrap_or_default();
                self.admin_port = address.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            }
            if self.admin_port != 0 && self.admin_get("/ready").is_some_and(|body| body.contains("LIVE")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("Envoy was not ready within 30 s:\n{}", self.log());
    }

    /// The body of an admin endpoint, if it answered 200.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        if head.split(' ').nth(1) != Some("200") {
            return None;
        }
        let chunked = head
            .lines()
            .any(|line| line.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
        Some(if chunked { dechunk(body)? } else { body.to_string() })
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Envoy's log lines from wsgate.
    pub fn wsgate_log(&self) -> Vec<String> {
        let ours = |line: &&str| line.contains("wasm log") || line.contains("] wsgate: ");
        self.log().lines().filter(ours).map(str::to_string).collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- Envoy log ----\n{}---- end of Envoy log ----", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for dir in &self.others {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The body of a chunked HTTP/1.1 response (RFC 9112 section 7.1).
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Envoy with wsgate in front of a fresh echo upstream: one listener per plugin config.
pub struct Gate {
    pub envoy: Envoy,
    /// The listener ports, in the order of the plugin configs.
    pub ports: Vec<u16>,
    pub upstream: Recorder,
    /// The certificate of the TLS listeners (DER), for clients to trust.
    pub certificate: Vec<u8>,
}

/// How a listener of a [`Gate`] is reached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plaintext,
    Tls,
}

impl Gate {
    /// Starts the echo upstream on the current tokio runtime and Envoy in front of it, with a
    /// plaintext listener for each plugin config.
    pub async fn start(plugin_configs: &[&str]) -> Gate {
        let listeners: Vec<_> = plugin_configs.iter().map(|config| (*config, Transport::Plaintext)).collect();
        Gate::start_listeners(&listeners).await
    }

    /// Like [`Gate::start`], with a transport for each listener.
    pub async fn start_listeners(listeners: &[(&str, Transport)]) -> Gate {
        Gate::start_with_clusters(listeners, &[]).await
    }

    /// Like [`Gate::start_listeners`], with further clusters (by name and address) that the
    /// plugin configs can name.
    pub async fn start_with_clusters(
        listeners: &[(&str, Transport)],
        clusters: &[(&str, SocketAddr)],
    ) -> Gate {
        Gate::start_with(listeners, clusters, "").await
    }

    /// Like [`Gate::start`], with further connection-manager settings on every listener.
    pub async fn start_with_connection_manager(plugin_configs: &[&str], connection_manager: &str) -> Gate {
        let listeners: Vec<_> = plugin_configs.iter().map(|config| (*config, Transport::Plaintext)).collect();
        Gate::start_with(&listeners, &[], connection_manager).await
    }

    /// Like [`Gate::start`], with `workers` worker threads, each with its own VM.
    pub async fn start_workers(plugin_configs: &[&str], workers: usize) -> Gate {
        let listeners: Vec<_> = plugin_configs.iter().map(|config| (*config, Transport::Plaintext)).collect();
        Gate::start_on(&listeners, &[], "", workers).await
    }

    async fn start_with(
        listeners: &[(&str, Transport)],
        clusters: &[(&str, SocketAddr)],
        connection_manager: &str,
    ) -> Gate {
        Gate::start_on(listeners, clusters, connection_manager, 1).await
    }

    async fn start_on(
        listeners: &[(&str, Transport)],
        clusters: &[(&str, SocketAddr)],
        connection_manager: &str,
        workers: usize,
    ) -> Gate {
        let upstream = Recorder::default();
        let upstream_addr = wsgate_echo::start("127.0.0.1:0", upstream.clone()).await.unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = scratch_dir();
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.cert, certified.cert.pem()).unwrap();
        std::fs::write(&files.key, certified.signing_key.serialize_pem()).unwrap();
        let yaml: Vec<String> = listeners
            .iter()
            .enumerate()
            .map(|(i, (config, transport))| {
                let tls = (*transport == Transport::Tls).then_some(&files);
                listener_yaml_with(&format!("listener_{i}"), 0, config, tls, connection_manager)
            })
            .collect();
        let mut envoy =
            Envoy::start_workers(&bootstrap_yaml_with(&yaml, upstream_addr, clusters, 0), workers);
        envoy.also_remove(dir);
        let ports = (0..listeners.len()).map(|i| envoy.listener_port(&format!("listener_{i}"))).collect();
        let loaded = envoy.wsgate_log().iter().filter(|line| line.contains("configuration loaded")).count();
        assert!(loaded >= listeners.len(), "the {:?} build loaded {loaded} configurations", build());
        Gate { envoy, ports, upstream, certificate: certified.cert.der().to_vec() }
    }

    /// The first listener's port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// What the upstream has received so far.
    pub fn upstream_requests(&self) -> Vec<SeenRequest> {
        self.upstream.requests()
    }
}

/// Runs `envoy --mode validate` on a bootstrap file (paths relative to `cwd`).
pub fn validate(config: &Path, cwd: &Path) -> Output {
    Command::new(envoy_bin())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(config)
        .args(["--disable-hot-restart", "-l", "info"])
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Validates a bootstrap given as text.
pub fn validate_yaml(bootstrap: &str) -> Output {
    let dir = scratch_dir();
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, bootstrap).unwrap();
    let output = validate(&config, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    output
}

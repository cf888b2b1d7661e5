//! One Envoy per variant, each with `--concurrency 1` and pinned to one core, and what the
//! kernel says each one spent: CPU time (from its threads' `schedstat`, in nanoseconds) and
//! resident memory.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxError;

/// What sits in front of the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The router alone.
    Plain,
    /// Envoy's own filters doing wsgate's job: RBAC on `Origin`, `jwt_authn` on the query
    /// parameter, `response_headers_to_add` for the security headers.
    Native,
    /// A Rust proxy-wasm filter that does nothing: the floor of any wasm filter.
    Noop,
    /// wsgate (the proxy-wasm module).
    Wsgate,
    /// An Envoy dynamic module that does nothing: the floor of any native module.
    NoopModule,
    /// wsgate as a dynamic module, with the same configuration as [`Variant::Wsgate`].
    WsgateModule,
    /// wsgate with a second policy for `/wait`, whose sockets wait for their first message:
    /// for the line on ordinary requests while thousands of sockets wait. Not in [`Variant::ALL`].
    WsgateWaiting,
    /// The same configuration in a second Envoy, where no socket waits: the other side of that
    /// line. Not in [`Variant::ALL`].
    WsgateNoneWaiting,
    /// wsgate's configuration with a realistic set of message rules: for the cost per message.
    /// Not in [`Variant::ALL`].
    WsgateRules,
    /// The same, as a dynamic module. Not in [`Variant::ALL`].
    WsgateModuleRules,
    /// The do-nothing wasm filter again, in an Envoy of its own: the A/A control. Two Envoys
    /// that run the same thing should agree; by how much they do not is the run's noise.
    NoopAgain,
    /// wsgate, another build of the module (`WSGATE_WASM_BEFORE`), with the same configuration:
    /// a step measured before and after in the same run. Not in [`Variant::ALL`].
    WsgateBefore,
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::Plain,
        Variant::Native,
        Variant::Noop,
        Variant::Wsgate,
        Variant::NoopModule,
        Variant::WsgateModule,
        Variant::NoopAgain,
    ];

    /// The variants of the main rounds, in the order they are measured and shown: [`Variant::ALL`],
    /// with [`Variant::WsgateBefore`] after wsgate when `before` is set.
    pub fn measured(before: bool) -> Vec<Variant> {
        let mut variants = Variant::ALL.to_vec();
        let after_wsgate = variants.iter().position(|v| *v == Variant::Wsgate).map_or(0, |at| at + 1);
        if before {
            variants.insert(after_wsgate, Variant::WsgateBefore);
        }
        variants
    }

    /// Whether this variant is wsgate, in either build, doing the benchmark's job.
    pub fn is_wsgate(self) -> bool {
        matches!(self, Variant::Wsgate | Variant::WsgateModule | Variant::WsgateBefore)
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Native => "native",
            Variant::Noop => "noop-wasm",
            Variant::Wsgate => "wsgate",
            Variant::NoopModule => "noop-module",
            Variant::WsgateModule => "wsgate-module",
            Variant::WsgateWaiting => "wsgate-waiting",
            Variant::WsgateNoneWaiting => "wsgate-none-waiting",
            Variant::WsgateRules => "wsgate-rules",
            Variant::WsgateModuleRules => "wsgate-module-rules",
            Variant::NoopAgain => "noop-wasm-again",
            Variant::WsgateBefore => "wsgate-before",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the files a variant needs are.
pub struct Inputs {
    pub envoy: PathBuf,
    pub wsgate_wasm: PathBuf,
    /// Another build of the module, measured beside this one (`WSGATE_WASM_BEFORE`).
    pub wsgate_wasm_before: Option<PathBuf>,
    pub noop_wasm: PathBuf,
    pub wsgate_module: PathBuf,
    pub noop_module: PathBuf,
    /// The JWKS (JSON) both wsgate and `jwt_authn` verify with.
    pub jwks: String,
    pub issuer: &'static str,
    pub audience: &'static str,
    pub allowed_origin: &'static str,
    pub token_param: &'static str,
}

/// The security headers wsgate adds by default to a plaintext response, which the native
/// variant adds with `response_headers_to_add`.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "base-uri 'self'; connect-src 'self'; frame-ancestors 'self'; object-src 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// wsgate's plugin configuration for the benchmark: the same job as the native filters, or
/// `BENCH_WSGATE_CONFIG` (JSON) to measure another.
pub fn wsgate_config(inputs: &Inputs) -> Result<String, BoxError> {
    if let Ok(config) = std::env::var("BENCH_WSGATE_CONFIG") {
        return Ok(config);
    }
    let jwks: serde_json::Value = serde_json::from_str(&inputs.jwks)?;
    Ok(serde_json::json!({
        "allowed_origins": [inputs.allowed_origin],
        "require_tls": false,
        "auth": {
            "sources": [{"query": inputs.token_param}],
            "jwt": {
                "algorithms": ["RS256", "ES256", "EdDSA", "HS256"],
                "jwks": jwks,
                "issuers": [inputs.issuer],
                "audiences": [inputs.audience],
                "cache": {"max_entries": 1024}
            }
        }
    })
    .to_string())
}

/// The benchmark's wsgate configuration with the message rules a chat service would set: sizes,
/// rates well above the load's, text only, and a JSON type among three; or
/// `BENCH_MESSAGE_RULES` (JSON), to measure others.
fn rules_config(inputs: &Inputs) -> Result<String, BoxError> {
    let mut config: serde_json::Value = serde_json::from_str(&wsgate_config(inputs)?)?;
    let policy = config.as_object_mut().ok_or("the benchmark's wsgate configuration is no object")?;
    let rules = match std::env::var("BENCH_MESSAGE_RULES") {
        Ok(rules) => serde_json::from_str(&rules)?,
        Err(_) => RULES.clone(),
    };
    policy.insert("messages".into(), rules);
    Ok(config.to_string())
}

/// The rule set of [`Variant::WsgateRules`].
pub static RULES: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
    serde_json::json!({
        "client": {
            "max_frame_bytes": 65536,
            "max_message_bytes": 262144,
            "messages_per_second": 100000, "message_burst": 100000,
            "bytes_per_second": 100000000,
            "opcodes": ["text"],
            "json": {"pointer": "/type", "one_of": ["join", "say", "leave"]}
        },
        "server": {"max_message_bytes": 1048576}
    })
});

/// The path whose sockets wait for their first message under [`Variant::WsgateWaiting`].
pub const WAITING_PATH: &str = "/wait";

/// The benchmark's wsgate configuration as the `default` policy, and a policy for
/// [`WAITING_PATH`] that takes the credential from the first message, given a minute.
fn waiting_config(inputs: &Inputs) -> Result<String, BoxError> {
    let base: serde_json::Value = serde_json::from_str(&wsgate_config(inputs)?)?;
    let mut waiting = base.clone();
    let policy = waiting.as_object_mut().ok_or("the benchmark's wsgate configuration is no object")?;
    let first_message = serde_json::json!({"token_pointer": "/token", "timeout_ms": 60000});
    if let Some(auth) = policy.get_mut("auth").and_then(serde_json::Value::as_object_mut) {
        auth.insert("sources".into(), serde_json::json!([{ "first_message": first_message }]));
    }
    policy.insert("match".into(), serde_json::json!({"path_prefix": WAITING_PATH}));
    Ok(serde_json::json!({"stat_prefix": "bench_waiting", "policies": [waiting], "default": base})
        .to_string())
}

fn wasm_filter(name: &str, root_id: &str, wasm: &Path, configuration: &str) -> Result<String, BoxError> {
    Ok(format!(
        r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {root_id}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}"#,
        configuration = serde_json::to_string(configuration)?,
        wasm = wasm.display()
    ))
}

fn module_filter(module: &Path, configuration: &str) -> Result<String, BoxError> {
    Ok(format!(
        r#"
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                module: {{local: {{filename: {module}}}}}
              filter_name: wsgate
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {configuration}"#,
        configuration = serde_json::to_string(configuration)?,
        module = module.display()
    ))
}

fn native_filters(inputs: &Inputs) -> Result<String, BoxError> {
    Ok(format!(
        r#"
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  origin:
                    permissions:
                    - or_rules:
                        rules:
                        - not_rule: {{header: {{name: upgrade, present_match: true}}}}
                        - header: {{name: origin, string_match: {{exact: "{origin}"}}}}
                    principals: [{{any: true}}]
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: {issuer}
                  audiences: [{audience}]
                  from_params: [{param}]
                  local_jwks: {{inline_string: {jwks}}}
                  jwt_cache_config: {{jwt_cache_size: 1024}}
              rules:
              - match: {{prefix: "/", headers: [{{name: upgrade, present_match: true}}]}}
                requires: {{provider_name: bench}}"#,
        origin = inputs.allowed_origin,
        issuer = inputs.issuer,
        audience = inputs.audience,
        param = inputs.token_param,
        jwks = serde_json::to_string(&inputs.jwks)?,
    ))
}

fn bootstrap(variant: Variant, inputs: &Inputs, upstream: SocketAddr) -> Result<String, BoxError> {
    let filters = match variant {
        Variant::Plain => String::new(),
        Variant::Native => native_filters(inputs)?,
        Variant::Noop | Variant::NoopAgain => wasm_filter("noop", "noop", &inputs.noop_wasm, "")?,
        Variant::WsgateBefore => {
            let before = inputs.wsgate_wasm_before.as_ref().ok_or("WSGATE_WASM_BEFORE is not set")?;
            wasm_filter("wsgate", "wsgate", before, &wsgate_config(inputs)?)?
        }
        Variant::Wsgate => wasm_filter("wsgate", "wsgate", &inputs.wsgate_wasm, &wsgate_config(inputs)?)?,
        Variant::NoopModule => module_filter(&inputs.noop_module, "")?,
        Variant::WsgateModule => module_filter(&inputs.wsgate_module, &wsgate_config(inputs)?)?,
        Variant::WsgateWaiting | Variant::WsgateNoneWaiting => {
            wasm_filter("wsgate", "wsgate", &inputs.wsgate_wasm, &waiting_config(inputs)?)?
        }
        Variant::WsgateRules => wasm_filter("wsgate", "wsgate", &inputs.wsgate_wasm, &rules_config(inputs)?)?,
        Variant::WsgateModuleRules => module_filter(&inputs.wsgate_module, &rules_config(inputs)?)?,
    };
    // HTTP/2 extended CONNECT only where sockets are held that way: the other variants keep the
    // HTTP/1.1 codec their figures were always measured with.
    let codec = match variant {
        Variant::WsgateWaiting | Variant::WsgateNoneWaiting => {
            "AUTO\n          http2_protocol_options: {allow_connect: true}"
        }
        _ => "HTTP1",
    };
    let response_headers = if variant == Variant::Native {
        let headers: Vec<String> = SECURITY_HEADERS
            .iter()
            .map(|(name, value)| {
                format!(
                    "{{header: {{key: {name}, value: {value}}}, append_action: APPEND_IF_EXISTS_OR_ADD}}",
                    value = serde_json::Value::from(*value)
                )
            })
            .collect();
        format!("\n              response_headers_to_add: [{}]", headers.join(", "))
    } else {
        String::new()
    };
    Ok(format!(
        r#"static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: {codec}
          upgrade_configs: [{{upgrade_type: websocket}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]{response_headers}
              routes:
              - {{match: {{prefix: "/"}}, route: {{cluster: upstream}}}}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 2s
    type: STATIC
    # Room for the 10,000 sockets of the waiting line; Envoy's default is 1,024 of each.
    circuit_breakers:
      thresholds: [{{max_connections: 20000, max_pending_requests: 20000, max_requests: 20000}}]
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#,
        ip = upstream.ip(),
        port = upstream.port()
    ))
}

/// A running Envoy; dropping it kills the process.
pub struct Envoy {
    child: Child,
    pub variant: Variant,
    pub port: u16,
    dir: PathBuf,
    /// The admin's address, `127.0.0.1:PORT`.
    admin: String,
}

impl Envoy {
    /// Starts the variant's Envoy, pinned to `core` when given, and waits for its listener.
    pub fn start(
        variant: Variant,
        inputs: &Inputs,
        upstream: SocketAddr,
        core: Option<usize>,
    ) -> Result<Envoy, BoxError> {
        let dir = std::env::temp_dir().join(format!("wsgate-bench-{}-{variant}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap(variant, inputs, upstream)?)?;
        let admin_address = dir.join("admin-address");
        let _ = std::fs::remove_file(&admin_address);
        let mut command = match core {
            Some(core) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(core.to_string()).arg(&inputs.envoy);
                taskset
            }
            None => Command::new(&inputs.envoy),
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_address)
            // BENCH_CONCURRENCY=2 (with BENCH_ENVOY_CORE=none): workers that share one
            // configuration, its credential cache and key sets (the native build's locks).
            .arg("--concurrency")
            .arg(std::env::var("BENCH_CONCURRENCY").unwrap_or_else(|_| "1".into()))
            .args(["--disable-hot-restart", "-l", "warning"])
            .arg("--base-id")
            .arg(format!("{}", std::process::id() % 10_000 * 10 + variant as u32))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("envoy.log"))?)
            .spawn()?;
        let mut envoy = Envoy { child, variant, port: 0, dir, admin: String::new() };
        envoy.port = envoy.wait_for_listener(&admin_address)?;
        envoy.admin = std::fs::read_to_string(&admin_address)?.trim().to_string();
        Ok(envoy)
    }

    fn wait_for_listener(&mut self, admin_address: &Path) -> Result<u16, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
                return Err(format!("{} Envoy exited ({status}):\n{log}", self.variant).into());
            }
            if let Ok(admin) = std::fs::read_to_string(admin_address) {
                if let Ok(listeners) = admin_get(admin.trim(), "/listeners") {
                    // The plain-text form: `bench::127.0.0.1:PORT`.
                    let port = listeners
                        .split("bench::127.0.0.1:")
                        .nth(1)
                        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
                        .and_then(|digits| digits.parse().ok());
                    if let Some(port) = port.filter(|&port: &u16| port != 0) {
                        return Ok(port);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{} Envoy did not report its listener within 30 s", self.variant).into())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has had so far, every thread, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        process_cpu_ns(self.pid())
    }

    /// User-space CPU time the process has had so far, in nanoseconds (`/proc/PID/stat`, in
    /// ticks of 10 ms). The filters run in user space; the kernel's share of a connection is
    /// the same work for every variant, and noisy.
    pub fn user_cpu_ns(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The fields after the command name, which is in parentheses and may hold spaces.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        // utime is field 14 of the line, the 12th after the name.
        after.split_whitespace().nth(11).and_then(|ticks| ticks.parse::<u64>().ok()).unwrap_or(0) * 10_000_000
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| {
                status.lines().find_map(|line| {
                    line.strip_prefix("VmRSS:")
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|kib| kib.parse().ok())
                })
            })
            .unwrap_or(0)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CPU time of every thread of `pid` so far, in nanoseconds (`/proc/PID/task/*/schedstat`).
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum()
}

impl Envoy {
    /// The value of one of Envoy's stats, if it has it.
    /// The sum of every counter whose name holds `part` (either build's names).
    pub fn stat_sum(&self, part: &str) -> u64 {
        let answer = admin_get(&self.admin, &format!("/stats?filter={part}")).unwrap_or_default();
        answer.lines().filter_map(|line| line.rsplit_once(": ")?.1.trim().parse::<u64>().ok()).sum()
    }

    pub fn stat(&self, name: &str) -> Option<u64> {
        let answer = admin_get(&self.admin, &format!("/stats?filter=^{}$", name.replace('.', "\\."))).ok()?;
        answer.lines().find_map(|line| line.strip_prefix(&format!("{name}: ")))?.trim().parse().ok()
    }
}

/// A GET to Envoy's admin over HTTP/1.1 (the admin refuses 1.0); the raw answer.
fn admin_get(address: &str, path: &str) -> Result<String, BoxError> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

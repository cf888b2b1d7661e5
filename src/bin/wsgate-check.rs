//! `wsgate-check`: checks a wsgate configuration with the same core the filter runs, for CI
//! pipelines, before a configuration reaches a fleet.
//!
//! ```text
//! wsgate-check --schema
//! wsgate-check CONFIG.json
//! wsgate-check CONFIG.json --url 'wss://chat.example.com/ws?access_token=...' --origin https://chat.example.com \
//!     [--header 'cookie: ...']... [--now UNIX_SECONDS]
//! ```
//!
//! The first form prints what the configuration compiled to, or every error with its JSON path
//! (the first error of each policy), and exits 1 on errors. The second also prints the verdict
//! on one WebSocket handshake: the reason, the status and the policy that decided. `--schema`
//! prints the JSON Schema of the configuration.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use wsgate::{Config, Policy, Request, RequestEdit, Verdict};

const USAGE: &str = "usage: wsgate-check --schema | wsgate-check CONFIG.json [--url URL [--origin ORIGIN] [--header 'NAME: VALUE']... [--now UNIX_SECONDS]]";

struct Handshake {
    url: String,
    origin: Option<String>,
    headers: Vec<(String, String)>,
    now: Option<u64>,
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    if args.first().map(String::as_str) == Some("--schema") {
        let schema = serde_json::to_string_pretty(&wsgate::schema::generate()).map_err(|e| e.to_string())?;
        println!("{schema}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut args = args.into_iter();
    let path = args.next().filter(|a| !a.starts_with('-')).ok_or("no configuration file given")?;
    let mut handshake = None::<Handshake>;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let hs = handshake.get_or_insert_with(|| Handshake {
            url: String::new(),
            origin: None,
            headers: Vec::new(),
            now: None,
        });
        match arg.as_str() {
            "--url" => hs.url = value()?,
            "--origin" => hs.origin = Some(value()?),
            "--header" => {
                let line = value()?;
                let (name, value) =
                    line.split_once(':').ok_or(format!("--header {line:?} is not 'name: value'"))?;
                hs.headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            "--now" => {
                hs.now = Some(value()?.parse().map_err(|_| "--now takes seconds since the Unix epoch")?)
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let json = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let compiled = Config::from_json(&json)
        .map_err(|error| vec![error])
        .and_then(|config| Policy::compile_all(config, &|name| std::env::var(name).ok()));
    let policy = match compiled {
        Ok(policy) => policy,
        Err(errors) => {
            for error in &errors {
                println!("error: {error}");
            }
            println!("{path}: {} error(s)", errors.len());
            return Ok(ExitCode::from(1));
        }
    };
    println!("{path}: OK");
    for summary in policy.policy_summaries() {
        println!("policy {summary}");
    }
    for warning in policy.warnings() {
        println!("warning: {warning}");
    }
    println!("advice: on every HTTP connection manager that runs wsgate (README, \"What wsgate assumes about the upstream\"):");
    for (setting, why) in wsgate::canonical::CONNECTION_MANAGER_ADVICE {
        println!("advice:   {setting}  # {why}");
    }
    if policy.uses_same_origin() {
        println!(
            "advice:   strip_any_host_port and strip_matching_host_port off  # same_origin reads the port in \
             :authority; stripped, a page on the same host's default port would pass for this one"
        );
    }
    if policy.limits_clients() {
        println!(
            "advice:   use_remote_address: true (and xff_num_trusted_hops for each proxy in front)  # \
             limits.max_sockets_per_client counts the address Envoy resolved; without it Envoy takes that \
             from x-forwarded-for, which a client writes"
        );
    }
    if let Some(handshake) = handshake {
        if handshake.url.is_empty() {
            return Err("--origin, --header and --now go with --url".to_string());
        }
        decide(&policy, &handshake)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Decides one handshake as the filter would, and prints the verdict.
fn decide(policy: &Policy, handshake: &Handshake) -> Result<(), String> {
    let (scheme, rest) =
        handshake.url.split_once("://").ok_or(format!("--url {:?} has no scheme", handshake.url))?;
    let tls = match scheme {
        "wss" | "https" => true,
        "ws" | "http" => false,
        other => return Err(format!("--url scheme {other:?} is not ws, wss, http or https")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), b"GET".to_vec()),
        (":scheme".into(), if tls { b"https".to_vec() } else { b"http".to_vec() }),
        (":authority".into(), authority.as_bytes().to_vec()),
        (":path".into(), path.into_bytes()),
        ("connection".into(), b"Upgrade".to_vec()),
        ("upgrade".into(), b"websocket".to_vec()),
        ("sec-websocket-version".into(), b"13".to_vec()),
    ];
    if let Some(origin) = &handshake.origin {
        headers.push(("origin".into(), origin.as_bytes().to_vec()));
    }
    headers.extend(handshake.headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())));
    let request = Request::new(headers).with_tls(tls);
    let now = handshake.now.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
    });
    let decided_by = policy.policy_for(&request).unwrap_or("-").to_string();
    match policy.decide(&request, now) {
        Verdict::Admit(edits) => {
            println!("verdict: admit\npolicy: {decided_by}");
            print_edits(edits);
        }
        Verdict::Await { edits, awaiting } => {
            println!("verdict: admit once the first message verifies\npolicy: {decided_by}");
            let wait = awaiting.deadline_ms.saturating_sub(now.saturating_mul(1000));
            println!("first message: within {wait} ms, else the socket is closed");
            print_edits(edits);
        }
        Verdict::Deny(denial) => println!(
            "verdict: deny\nreason: {}\nstatus: {}\npolicy: {}",
            denial.reason.as_str(),
            denial.status,
            denial.policy
        ),
        Verdict::ShadowAdmit(edits) => {
            println!("verdict: shadow admit (goes on unchanged)\npolicy: {decided_by}");
            print_edits(edits);
        }
        Verdict::ShadowDeny(denial, edits) => {
            println!(
                "verdict: shadow deny (goes on unchanged)\nreason: {}\nstatus: {}\npolicy: {}",
                denial.reason.as_str(),
                denial.status,
                denial.policy
            );
            print_edits(edits);
        }
        Verdict::Pass(_) => println!("verdict: pass (not an upgrade)"),
    }
    Ok(())
}

/// What the upstream gets instead of what the client sent.
fn print_edits(edits: Vec<RequestEdit<'_>>) {
    for edit in edits {
        match edit {
            RequestEdit::Set(name, value) => {
                println!("upstream gets: {name}: {}", String::from_utf8_lossy(&value))
            }
            RequestEdit::Remove(name) => println!("upstream gets: no {name}"),
            RequestEdit::RemoveForged(name) => println!("upstream gets: no {name}"),
            RequestEdit::Lines(name, lines) if lines.is_empty() => println!("upstream gets: no {name}"),
            RequestEdit::Lines(name, lines) => {
                for line in lines {
                    println!("upstream gets: {name}: {}", String::from_utf8_lossy(&line));
                }
            }
        }
    }
}

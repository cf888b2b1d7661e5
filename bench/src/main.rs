//! `make bench`: what wsgate costs in a real Envoy, next to what the same Envoy costs with
//! nothing in front of the router, with Envoy's own filters doing the same job, and with a
//! wasm filter that does nothing.
//!
//! One Envoy per variant, each `--concurrency 1` and pinned to core 0 (`BENCH_ENVOY_CORE`); this
//! process (the load and the upstream, on one tokio thread) runs on the other core, where `make
//! bench` pins it. Each workload runs in rounds that interleave the variants (A B C D, A B C D,
//! ...), and the report gives medians over rounds of each round's figures and of its ratios
//! against plain Envoy and the native filters, so that a slow moment of the machine weighs on
//! all variants alike. A round in which other processes used a measured core is reported.

mod envoy;
mod load;
mod report;
mod tokens;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;

use envoy::{Envoy, Inputs, Variant};
use report::{Measure, Results};

pub type BoxError = Box<dyn std::error::Error>;

/// What the environment may change; `make bench` documents each.
struct Settings {
    rounds: usize,
    seconds: f64,
    connections: usize,
    memory_requests: u64,
    envoy_core: Option<usize>,
    report: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(value) => value.parse().map_err(|_| format!("{name}={value} is not a number").into()),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, BoxError> {
        let envoy_core = match std::env::var("BENCH_ENVOY_CORE").as_deref() {
            Ok("none") => None,
            Ok(core) => Some(core.parse().map_err(|_| format!("BENCH_ENVOY_CORE={core} is not a core"))?),
            Err(_) => Some(0),
        };
        Ok(Settings {
            rounds: env_or("BENCH_ROUNDS", 5)?,
            seconds: env_or("BENCH_SECONDS", 1.5)?,
            connections: env_or("BENCH_CONNECTIONS", 16)?,
            memory_requests: env_or("BENCH_MEMORY_REQUESTS", 1_000_000)?,
            envoy_core,
            report: std::env::var_os("BENCH_REPORT").map(PathBuf::from),
        })
    }
}

/// What a workload sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// An ordinary GET through the upstream: the header path.
    Get,
    /// The same with a browser's request headers and a web application's response headers.
    BrowserGet,
    /// A handshake with an allowed origin and the same RS256 token each time.
    RepeatedToken,
    /// A handshake with a token never seen recently, signed with the algorithm.
    NewToken(Algorithm),
    /// A handshake from a foreign origin: the 403 path.
    ForeignOrigin,
    /// 1 KiB messages echoed over an established WebSocket.
    Messages,
}

impl Workload {
    fn all() -> Vec<Workload> {
        let mut all =
            vec![Workload::Get, Workload::BrowserGet, Workload::RepeatedToken, Workload::ForeignOrigin];
        all.extend(tokens::ALGORITHMS.iter().map(|(algorithm, _)| Workload::NewToken(*algorithm)));
        all.push(Workload::Messages);
        all
    }

    pub fn title(self) -> String {
        match self {
            Workload::Get => "Ordinary GET".into(),
            Workload::BrowserGet => "A browser's GET, 18 response headers".into(),
            Workload::RepeatedToken => "Handshake, allowed origin, the same RS256 token".into(),
            Workload::NewToken(algorithm) => format!("Handshake, a new {algorithm:?} token each time"),
            Workload::ForeignOrigin => "Handshake from a foreign origin".into(),
            Workload::Messages => "1 KiB messages on established sockets".into(),
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::Get | Workload::BrowserGet => "requests",
            Workload::Messages => "messages",
            _ => "handshakes",
        }
    }

    /// The status a variant answers when it does its job.
    fn expected_status(self, variant: Variant) -> u16 {
        match self {
            Workload::Get | Workload::BrowserGet => 200,
            Workload::ForeignOrigin if variant == Variant::Native || variant.is_wsgate() => 403,
            _ => 101,
        }
    }
}

/// Everything a workload needs: the requests, signed before any Envoy starts.
struct Traffic {
    repeated: Vec<Vec<u8>>,
    foreign: Vec<Vec<u8>>,
    fresh: Vec<(Algorithm, Vec<Vec<u8>>)>,
    /// Where each workload's clients go on in its list, across rounds.
    next: Cell<usize>,
}

/// How many different tokens each algorithm cycles through: twice the caches' 1024 entries, so
/// that with least-recently-used eviction every one is a miss.
const FRESH_TOKENS: usize = 2048;

impl Traffic {
    fn sign(keys: &Path) -> Result<Traffic, BoxError> {
        let repeated = tokens::tokens(keys, Algorithm::RS256, 1)?;
        let requests = |origin: &str, tokens: &[String]| -> Vec<Vec<u8>> {
            tokens.iter().map(|token| tokens::handshake(origin, token)).collect()
        };
        let fresh = tokens::ALGORITHMS
            .iter()
            .map(|(algorithm, _)| {
                let signed = tokens::tokens(keys, *algorithm, FRESH_TOKENS)?;
                Ok((*algorithm, requests(tokens::ALLOWED_ORIGIN, &signed)))
            })
            .collect::<Result<_, BoxError>>()?;
        Ok(Traffic {
            repeated: requests(tokens::ALLOWED_ORIGIN, &repeated),
            foreign: requests(tokens::FOREIGN_ORIGIN, &repeated),
            fresh,
            next: Cell::new(0),
        })
    }

    fn handshakes(&self, workload: Workload) -> &[Vec<u8>] {
        match workload {
            Workload::ForeignOrigin => &self.foreign,
            Workload::NewToken(algorithm) => self
                .fresh
                .iter()
                .find(|(alg, _)| *alg == algorithm)
                .map(|(_, list)| list.as_slice())
                .unwrap_or(&[]),
            _ => &self.repeated,
        }
    }
}

/// CPU use of one core since boot, from `/proc/stat`: processes and steal, in nanoseconds.
fn core_busy_ns(core: usize) -> u64 {
    let ticks_to_ns = 10_000_000; // USER_HZ is 100 on Linux.
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let label = format!("cpu{core} ");
    stat.lines()
        .find(|line| line.starts_with(&label))
        .map(|line| {
            let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal: the time that processes (and other
            // machines, as steal) took; interrupts serve the measured traffic itself.
            [0, 1, 2, 7].iter().filter_map(|&i| fields.get(i)).sum::<u64>() * ticks_to_ns
        })
        .unwrap_or(0)
}

/// One measured interval of one workload on one variant.
async fn measure(
    envoy: &Envoy,
    workload: Workload,
    settings: &Settings,
    traffic: &Traffic,
    duration: Duration,
) -> Measure {
    let address = SocketAddr::from(([127, 0, 0, 1], envoy.port));
    let mut sockets = Vec::new();
    if workload == Workload::Messages {
        sockets =
            load::open_sockets(address, settings.connections, traffic.repeated.first().map_or(&[], |r| r))
                .await;
    }
    let bench_pid = std::process::id();
    let load_core = settings.envoy_core.map(|core| 1 - core.min(1));
    let (envoy_before, bench_before) = (envoy.cpu_ns(), envoy::process_cpu_ns(bench_pid));
    let user_before = envoy.user_cpu_ns();
    let cores_before = settings.envoy_core.zip(load_core).map(|(e, l)| (core_busy_ns(e), core_busy_ns(l)));
    let started = Instant::now();
    let until = started + duration;
    let outcome = match workload {
        Workload::Get => load::gets(address, settings.connections, until, load::PLAIN_GET).await,
        Workload::BrowserGet => load::gets(address, settings.connections, until, load::BROWSER_GET).await,
        Workload::Messages => load::messages(&mut sockets, until, 1024).await,
        _ => {
            let status = workload.expected_status(envoy.variant);
            let requests = traffic.handshakes(workload);
            load::handshakes(address, settings.connections, until, requests, status, &traffic.next).await
        }
    };
    let wall = started.elapsed();
    let envoy_cpu = envoy.cpu_ns().saturating_sub(envoy_before);
    let envoy_user = envoy.user_cpu_ns().saturating_sub(user_before);
    let bench_cpu = envoy::process_cpu_ns(bench_pid).saturating_sub(bench_before);
    let disturbance = cores_before.zip(settings.envoy_core.zip(load_core)).map(|((e0, l0), (e, l))| {
        let wall_ns = wall.as_nanos() as f64;
        let foreign_envoy = core_busy_ns(e).saturating_sub(e0).saturating_sub(envoy_cpu) as f64 / wall_ns;
        let foreign_load = core_busy_ns(l).saturating_sub(l0).saturating_sub(bench_cpu) as f64 / wall_ns;
        foreign_envoy.max(foreign_load)
    });
    drop(sockets);
    Measure::new(&outcome, wall, (envoy_cpu, envoy_user), disturbance.unwrap_or(0.0))
}

/// Checks that each variant does its job before anything is measured: the native filters and
/// wsgate must refuse what the benchmark says they refuse, or the comparison means nothing.
async fn check_jobs(envoys: &[Envoy], traffic: &Traffic) -> Result<(), BoxError> {
    let bad_token = tokens::handshake(tokens::ALLOWED_ORIGIN, "e30.e30.AAAA");
    // Another configuration (BENCH_WSGATE_CONFIG) may do another job.
    let custom = std::env::var_os("BENCH_WSGATE_CONFIG").is_some();
    for envoy in envoys.iter().filter(|envoy| !(custom && envoy.variant.is_wsgate())) {
        let address = SocketAddr::from(([127, 0, 0, 1], envoy.port));
        let mut checks = vec![(Workload::Get, None), (Workload::RepeatedToken, None)];
        checks.push((Workload::ForeignOrigin, None));
        checks.extend(tokens::ALGORITHMS.iter().map(|(algorithm, _)| (Workload::NewToken(*algorithm), None)));
        checks.push((Workload::RepeatedToken, Some(bad_token.clone())));
        for (workload, request) in checks {
            let (requests, expect) = match &request {
                Some(bad) => {
                    let refused = envoy.variant == Variant::Native || envoy.variant.is_wsgate();
                    (std::slice::from_ref(bad), if refused { 401 } else { 101 })
                }
                None => (traffic.handshakes(workload), workload.expected_status(envoy.variant)),
            };
            let until = Instant::now() + Duration::from_millis(100);
            let outcome = match workload {
                Workload::Get => load::gets(address, 1, until, load::PLAIN_GET).await,
                Workload::BrowserGet => load::gets(address, 1, until, load::BROWSER_GET).await,
                _ => load::handshakes(address, 1, until, requests, expect, &Cell::new(0)).await,
            };
            if outcome.ok == 0 || outcome.failed > 0 {
                let what = if request.is_some() { "a forged token".to_string() } else { workload.title() };
                return Err(format!("{}: {what} did not get {expect}", envoy.variant).into());
            }
        }
    }
    Ok(())
}

/// Drives ordinary GETs and allowed handshakes at `envoy`, in bursts, from `served` answers
/// until at least `requests`; returns how many it has then served.
async fn drive(envoy: &Envoy, served: u64, requests: u64, settings: &Settings, traffic: &Traffic) -> u64 {
    let address = SocketAddr::from(([127, 0, 0, 1], envoy.port));
    let expect = Workload::RepeatedToken.expected_status(envoy.variant);
    let mut served = served;
    while served < requests {
        let until = Instant::now() + Duration::from_secs(2);
        served += load::gets(address, settings.connections, until, load::PLAIN_GET).await.ok;
        let until = Instant::now() + Duration::from_millis(500);
        served +=
            load::handshakes(address, settings.connections, until, &traffic.repeated, expect, &traffic.next)
                .await
                .ok;
    }
    served
}

/// `BENCH_ONLY`: the workloads whose title contains one of its `|`-separated parts, any case (a
/// part that ends with `$` ends the title: `ordinary get$`); every workload when it is unset.
struct Only(Vec<String>);

impl Only {
    fn from_env() -> Only {
        let only = std::env::var("BENCH_ONLY").unwrap_or_default().to_lowercase();
        Only(only.split('|').map(str::trim).filter(|part| !part.is_empty()).map(String::from).collect())
    }

    fn includes(&self, title: &str) -> bool {
        let title = title.to_lowercase();
        self.0.is_empty()
            || self.0.iter().any(|part| match part.strip_suffix('$') {
                Some(end) => title.ends_with(end),
                None => title.contains(part.as_str()),
            })
    }
}

fn run() -> Result<bool, BoxError> {
    let settings = Settings::from_env()?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let keys = repo.join("tests/keys");
    let inputs = Inputs {
        envoy: std::env::var_os("WSGATE_ENVOY").map_or_else(|| repo.join(".venv/bin/envoy"), PathBuf::from),
        wsgate_wasm: std::env::var_os("WSGATE_WASM")
            .map_or_else(|| repo.join("target/wasm32-wasip1/release/wsgate.wasm"), PathBuf::from),
        wsgate_wasm_before: std::env::var_os("WSGATE_WASM_BEFORE").map(PathBuf::from),
        noop_wasm: repo.join("target/wasm32-wasip1/release/wsgate_bench_noop.wasm"),
        wsgate_module: std::env::var_os("WSGATE_MODULE")
            .map_or_else(|| repo.join("target/module/libwsgate_module.so"), PathBuf::from),
        noop_module: repo.join("target/module/libwsgate_bench_noop_module.so"),
        jwks: tokens::jwks(&keys)?,
        issuer: tokens::ISSUER,
        audience: tokens::AUDIENCE,
        allowed_origin: tokens::ALLOWED_ORIGIN,
        token_param: tokens::TOKEN_PARAM,
    };
    for path in
        [&inputs.envoy, &inputs.wsgate_wasm, &inputs.noop_wasm, &inputs.wsgate_module, &inputs.noop_module]
    {
        if !path.exists() {
            return Err(format!("{} is missing: run `make bench`, which builds it", path.display()).into());
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    eprintln!("signing {FRESH_TOKENS} tokens per algorithm ...");
    let traffic = Traffic::sign(&keys)?;
    let upstream =
        runtime.block_on(wsgate_echo::start("127.0.0.1:0", wsgate_echo::Recorder::discarding()))?;
    let variants = Variant::measured(inputs.wsgate_wasm_before.is_some());
    let envoys = variants
        .iter()
        .map(|variant| Envoy::start(*variant, &inputs, upstream, settings.envoy_core))
        .collect::<Result<Vec<_>, _>>()?;
    runtime.block_on(check_jobs(&envoys, &traffic))?;
    eprintln!("each variant does its job; measuring {} rounds of {} s", settings.rounds, settings.seconds);

    let mut results = Results::default();
    let duration = Duration::from_secs_f64(settings.seconds);
    let only = Only::from_env();
    let chosen = Workload::all().into_iter().filter(|w| only.includes(&w.title()));
    for workload in chosen {
        eprintln!("{}", workload.title());
        for envoy in &envoys {
            runtime.block_on(measure(envoy, workload, &settings, &traffic, duration / 3));
        }
        for round in 0..settings.rounds {
            for envoy in &envoys {
                let measure = runtime.block_on(measure(envoy, workload, &settings, &traffic, duration));
                results.add(workload, envoy.variant, round, measure);
            }
        }
    }

    let waiting = match only.includes(report::WAITING_TITLE) {
        true => {
            eprintln!("{}", report::WAITING_TITLE);
            measure_waiting(&runtime, &inputs, upstream, &settings, &traffic)?
        }
        false => Vec::new(),
    };

    let rules = match only.includes(report::RULES_TITLE) {
        true => {
            eprintln!("{}", report::RULES_TITLE);
            measure_rules(&runtime, &envoys, &inputs, upstream, &settings, &traffic)?
        }
        false => Vec::new(),
    };

    let after_rounds: Vec<(Variant, u64)> =
        envoys.iter().map(|envoy| (envoy.variant, envoy.rss_kib())).collect();
    drop(envoys);

    // Memory on fresh Envoys, so that what the rounds left behind weighs on neither.
    eprintln!("driving a new Envoy of each variant to {} requests ...", settings.memory_requests);
    let mut memory = Vec::new();
    // The A/A control is a check of the rounds' noise; a second do-nothing Envoy's memory is the first's.
    for variant in variants.into_iter().filter(|variant| *variant != Variant::NoopAgain) {
        let envoy = Envoy::start(variant, &inputs, upstream, settings.envoy_core)?;
        let warm = runtime.block_on(drive(&envoy, 0, 1, &settings, &traffic));
        let warm_kib = envoy.rss_kib();
        runtime.block_on(drive(&envoy, warm, settings.memory_requests, &settings, &traffic));
        memory.push(report::Memory { variant, warm_kib, after_kib: envoy.rss_kib() });
    }
    let module_bytes = std::fs::metadata(&inputs.wsgate_wasm)?.len();
    let settings_line = settings_line(&settings, started.elapsed());
    let text =
        report::render(&results, &waiting, &rules, &memory, &after_rounds, module_bytes, &settings_line);
    println!("{}", text.markdown);
    if let Some(path) = &settings.report {
        std::fs::write(path, &text.markdown)?;
    }
    Ok(text.all_met)
}

/// How many sockets wait for their first message in the line on ordinary requests beside them.
const WAITING_SOCKETS: usize = 10_000;

/// Ordinary GETs on two wsgate Envoys of the same configuration, in interleaved rounds: one
/// with [`WAITING_SOCKETS`] sockets waiting for their first message all along, one with none;
/// each round's pair of figures (none, waiting). The sockets are opened once: opening them again
/// each round would leave tens of thousands of upstream ports in TIME_WAIT.
fn measure_waiting(
    runtime: &tokio::runtime::Runtime,
    inputs: &Inputs,
    upstream: SocketAddr,
    settings: &Settings,
    traffic: &Traffic,
) -> Result<Vec<(Measure, Measure)>, BoxError> {
    let waiting = Envoy::start(Variant::WsgateWaiting, inputs, upstream, settings.envoy_core)?;
    let none = Envoy::start(Variant::WsgateNoneWaiting, inputs, upstream, settings.envoy_core)?;
    let address = SocketAddr::from(([127, 0, 0, 1], waiting.port));
    let held = runtime.block_on(load::hold_sockets(
        address,
        WAITING_SOCKETS,
        envoy::WAITING_PATH,
        tokens::ALLOWED_ORIGIN,
    ))?;
    // Each one is really waiting in wsgate, not merely open; and within its minute.
    let awaited = waiting.stat("wasmcustom.wsgate.bench_waiting.first_message.awaited").unwrap_or(0);
    if awaited != held.len() as u64 {
        return Err(format!("{} sockets opened, but wsgate waits on {awaited}", held.len()).into());
    }
    let duration = Duration::from_secs_f64(settings.seconds);
    for envoy in [&none, &waiting] {
        runtime.block_on(measure(envoy, Workload::Get, settings, traffic, duration / 3));
    }
    let mut rounds = Vec::new();
    for _ in 0..settings.rounds {
        let without = runtime.block_on(measure(&none, Workload::Get, settings, traffic, duration));
        let with = runtime.block_on(measure(&waiting, Workload::Get, settings, traffic, duration));
        rounds.push((without, with));
    }
    runtime.block_on(async move { drop(held) });
    Ok(rounds)
}

/// 1 KiB messages through each build without message rules (the Envoys of the main rounds) and
/// with [`envoy::RULES`] (two more), in interleaved rounds; each round's figures in the order of
/// [`report::RULES_VARIANTS`].
fn measure_rules(
    runtime: &tokio::runtime::Runtime,
    envoys: &[Envoy],
    inputs: &Inputs,
    upstream: SocketAddr,
    settings: &Settings,
    traffic: &Traffic,
) -> Result<Vec<Vec<Measure>>, BoxError> {
    let extra = [Variant::WsgateRules, Variant::WsgateModuleRules]
        .into_iter()
        .map(|variant| Envoy::start(variant, inputs, upstream, settings.envoy_core))
        .collect::<Result<Vec<_>, _>>()?;
    let find = |variant: Variant| envoys.iter().chain(&extra).find(|envoy| envoy.variant == variant);
    let measured: Vec<&Envoy> = report::RULES_VARIANTS.iter().filter_map(|variant| find(*variant)).collect();
    if measured.len() != report::RULES_VARIANTS.len() {
        return Err("an Envoy of the message rules' line is missing".into());
    }
    let duration = Duration::from_secs_f64(settings.seconds);
    for envoy in &measured {
        runtime.block_on(measure(envoy, Workload::Messages, settings, traffic, duration / 3));
    }
    let mut rounds = Vec::new();
    for _ in 0..settings.rounds {
        let round = measured
            .iter()
            .map(|envoy| runtime.block_on(measure(envoy, Workload::Messages, settings, traffic, duration)))
            .collect();
        rounds.push(round);
    }
    // The messages kept the rules: no socket was ended, so each one was read through them.
    for envoy in &extra {
        let refused = envoy.stat_sum("message_violations");
        if refused > 0 {
            return Err(format!("{}: {refused} sockets broke a message rule", envoy.variant).into());
        }
    }
    Ok(rounds)
}

fn settings_line(settings: &Settings, took: Duration) -> String {
    format!(
        "{} rounds of {} s per variant and workload, {} concurrent clients, Envoy pinned to core {}; {} s in all",
        settings.rounds,
        settings.seconds,
        settings.connections,
        settings.envoy_core.map_or("none".into(), |core| core.to_string()),
        took.as_secs()
    )
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("wsgate-bench: a budget line is missed (see the table)");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wsgate-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

//! The figures of each round, their medians and ratios, and the budget lines, as Markdown.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use crate::envoy::Variant;
use crate::load::Outcome;
use crate::Workload;
use jsonwebtoken::Algorithm;

/// Beyond this share of a measured core used by other processes, a round counts as disturbed.
const DISTURBED: f64 = 0.05;

/// One round of one workload on one variant.
pub struct Measure {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Envoy's CPU time per good answer, in microseconds.
    pub cpu_us: f64,
    /// The user-space part of it: where the filters run.
    pub user_us: f64,
    pub failed: u64,
    /// The largest share of either measured core that other processes used.
    pub disturbance: f64,
}

impl Measure {
    /// `envoy_cpu_ns`: Envoy's CPU time in the interval, all of it and in user space.
    pub fn new(outcome: &Outcome, wall: Duration, envoy_cpu_ns: (u64, u64), disturbance: f64) -> Measure {
        let mut latencies = outcome.latencies_us.clone();
        latencies.sort_unstable();
        let percentile = |p: f64| {
            let rank = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies.get(rank).map_or(f64::NAN, |&us| f64::from(us) / 1000.0)
        };
        Measure {
            per_second: outcome.ok as f64 / wall.as_secs_f64(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            cpu_us: envoy_cpu_ns.0 as f64 / 1000.0 / outcome.ok.max(1) as f64,
            user_us: envoy_cpu_ns.1 as f64 / 1000.0 / outcome.ok.max(1) as f64,
            failed: outcome.failed,
            disturbance,
        }
    }
}

#[derive(Default)]
pub struct Results {
    rounds: Vec<(Workload, Variant, usize, Measure)>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values.get(n / 2).copied().unwrap_or(f64::NAN),
        n => {
            (values.get(n / 2 - 1).copied().unwrap_or(f64::NAN)
                + values.get(n / 2).copied().unwrap_or(f64::NAN))
                / 2.0
        }
    }
}

impl Results {
    pub fn add(&mut self, workload: Workload, variant: Variant, round: usize, measure: Measure) {
        self.rounds.push((workload, variant, round, measure));
    }

    fn of(&self, workload: Workload, variant: Variant) -> impl Iterator<Item = (usize, &Measure)> {
        self.rounds
            .iter()
            .filter(move |(w, v, _, _)| *w == workload && *v == variant)
            .map(|(_, _, round, measure)| (*round, measure))
    }

    fn median_of(&self, workload: Workload, variant: Variant, figure: fn(&Measure) -> f64) -> f64 {
        median(self.of(workload, variant).map(|(_, m)| figure(m)).collect())
    }

    /// `variant`'s figures in round `round`.
    fn in_round(&self, workload: Workload, variant: Variant, round: usize) -> Option<&Measure> {
        self.of(workload, variant).find(|(r, _)| *r == round).map(|(_, measure)| measure)
    }

    /// The median over rounds of `combine(a's figure, b's figure)` within each round.
    fn median_per_round(
        &self,
        workload: Workload,
        (a, b): (Variant, Variant),
        combine: impl Fn(&Measure, &Measure) -> f64,
    ) -> f64 {
        let values = self
            .of(workload, a)
            .filter_map(|(round, ma)| Some(combine(ma, self.in_round(workload, b, round)?)))
            .collect();
        median(values)
    }

    fn ratio(&self, workload: Workload, a: Variant, b: Variant, figure: fn(&Measure) -> f64) -> f64 {
        self.median_per_round(workload, (a, b), |ma, mb| figure(ma) / figure(mb))
    }

    /// The median over rounds of `variant`'s user-space CPU per answer minus plain Envoy's, in
    /// µs: what a filter adds, without the kernel's connection work, which is the same for every
    /// variant and the noisiest part of a handshake.
    fn added_cpu(&self, workload: Workload, variant: Variant) -> f64 {
        self.median_per_round(workload, (variant, Variant::Plain), |m, plain| m.user_us - plain.user_us)
    }

    /// The median over rounds of a wsgate build's added CPU over the native filters' added CPU.
    fn added_cpu_ratio(&self, workload: Workload, wsgate: Variant) -> f64 {
        let values = self
            .of(workload, wsgate)
            .filter_map(|(round, wsgate)| {
                let native = self.in_round(workload, Variant::Native, round)?;
                let plain = self.in_round(workload, Variant::Plain, round)?;
                Some((wsgate.user_us - plain.user_us) / (native.user_us - plain.user_us))
            })
            .collect();
        median(values)
    }
}

/// Envoy's resident memory with a variant: after a first burst of requests, and at the end.
pub struct Memory {
    pub variant: Variant,
    pub warm_kib: u64,
    pub after_kib: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub struct Rendered {
    pub markdown: String,
    pub all_met: bool,
}

fn per_second(m: &Measure) -> f64 {
    m.per_second
}

fn cpu(m: &Measure) -> f64 {
    m.cpu_us
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
        .map_or("unknown CPU", |(_, model)| model.trim())
        .to_string();
    let cores = cpuinfo.lines().filter(|line| line.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = if cores > 0 { format!(", {cores} cores") } else { String::new() };
    format!("{model}{cores}, Linux {}, {date}", kernel.trim())
}

fn workload_table(out: &mut String, results: &Results, workload: Workload) {
    let unit = workload.unit();
    let _ = writeln!(out, "\n### {}\n", workload.title());
    let _ = writeln!(
        out,
        "| variant | {unit}/s | p50 ms | p99 ms | Envoy CPU µs per answer | of it user space | {unit}/s vs plain | vs native | CPU vs plain | vs native | failed | disturbed rounds |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for variant in Variant::measured(true) {
        if results.of(workload, variant).next().is_none() {
            continue;
        }
        let failed: u64 = results.of(workload, variant).map(|(_, m)| m.failed).sum();
        let disturbed = results.of(workload, variant).filter(|(_, m)| m.disturbance > DISTURBED).count();
        let rounds = results.of(workload, variant).count();
        let _ = writeln!(
            out,
            "| {variant} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {failed} | {disturbed}/{rounds} |",
            results.median_of(workload, variant, per_second),
            results.median_of(workload, variant, |m| m.p50_ms),
            results.median_of(workload, variant, |m| m.p99_ms),
            results.median_of(workload, variant, cpu),
            results.median_of(workload, variant, |m| m.user_us),
            results.ratio(workload, variant, Variant::Plain, per_second),
            results.ratio(workload, variant, Variant::Native, per_second),
            results.ratio(workload, variant, Variant::Plain, cpu),
            results.ratio(workload, variant, Variant::Native, cpu),
        );
    }
}

/// A budget line: what was measured, the bound, and whether it holds.
struct Line {
    what: Cow<'static, str>,
    figure: String,
    budget: Cow<'static, str>,
    met: bool,
    /// Whether the figure is a timing, which the A/A control's noise bears on (not a size).
    timed: bool,
}

/// The title of the line on ordinary requests while sockets wait for their first message.
pub const WAITING_TITLE: &str = "Ordinary GET while 10,000 sockets wait for their first message";

/// The title of the message rules' line.
pub const RULES_TITLE: &str = "1 KiB messages under a realistic rule set";

/// The Envoys of that line, in the order of each round's figures.
pub const RULES_VARIANTS: [Variant; 4] =
    [Variant::Wsgate, Variant::WsgateRules, Variant::WsgateModule, Variant::WsgateModuleRules];

pub fn render(
    results: &Results,
    waiting: &[(Measure, Measure)],
    rules: &[Vec<Measure>],
    memory: &[Memory],
    after_rounds: &[(Variant, u64)],
    module_bytes: u64,
    settings: &str,
) -> Rendered {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}.\n\nRun: {settings}.", machine());
    let _ = writeln!(
        out,
        "\nEach figure is the median over rounds; each ratio is the median of the ratios within each round."
    );

    let repeated = results.added_cpu_ratio(Workload::RepeatedToken, Variant::Wsgate);
    let native = Variant::WsgateModule;
    let native_get = results.added_cpu_ratio(Workload::Get, native);
    let native_repeated = results.added_cpu_ratio(Workload::RepeatedToken, native);
    let native_foreign = results.ratio(Workload::ForeignOrigin, native, Variant::Native, per_second);
    let native_messages = results.ratio(Workload::Messages, native, Variant::Plain, per_second);
    // The worst algorithm: each must cost at most jwt_authn's.
    let native_fresh = crate::Workload::all()
        .into_iter()
        .filter(|w| matches!(w, Workload::NewToken(_)) && results.of(*w, native).next().is_some())
        .map(|w| (w, results.added_cpu_ratio(w, native)))
        .max_by(worst);
    let get = results.ratio(Workload::Get, Variant::Wsgate, Variant::Noop, per_second);
    let get_cpu = results
        .median_per_round(Workload::Get, (Variant::Wsgate, Variant::Noop), |w, n| w.user_us - n.user_us);
    let control = a_a_control(results);
    let foreign = results.ratio(Workload::ForeignOrigin, Variant::Wsgate, Variant::Native, per_second);
    let messages = results.ratio(Workload::Messages, Variant::Wsgate, Variant::Plain, per_second);
    let beside_waiting =
        median(waiting.iter().map(|(none, held)| held.per_second / none.per_second).collect());
    let waiting_cpu = median(waiting.iter().map(|(none, held)| held.user_us - none.user_us).collect());
    let of = |variant| memory.iter().find(|m| m.variant == variant);
    let memory_gap =
        of(Variant::Wsgate).zip(of(Variant::Noop)).map(|(w, n)| mib(w.after_kib) - mib(n.after_kib));
    let native_memory_gap =
        of(native).zip(of(Variant::Plain)).map(|(w, p)| mib(w.after_kib) - mib(p.after_kib));
    let lines = [
        Line {
            what: "Repeated credential: wsgate's added Envoy CPU (user space) per handshake over the native filters'".into(),
            figure: format!(
                "{repeated:.2} ({:.1} µs against {:.1} µs)",
                results.added_cpu(Workload::RepeatedToken, Variant::Wsgate),
                results.added_cpu(Workload::RepeatedToken, Variant::Native)
            ),
            budget: "at most 0.5".into(),
            met: repeated <= 0.5,
            timed: true,
        },
        Line {
            what: "Ordinary GET: wsgate's requests per second over the do-nothing wasm filter's".into(),
            figure: format!("{get:.3}"),
            budget: "at least 0.93".into(),
            met: get >= 0.93,
            timed: true,
        },
        Line {
            what: "Ordinary GET: wsgate's user CPU per request minus the do-nothing wasm filter's".into(),
            figure: format!("{get_cpu:.1} µs"),
            budget: "at most 5 µs".into(),
            met: get_cpu <= 5.0,
            timed: true,
        },
        Line {
            what: "Foreign origin: wsgate's rejections per second over the native filters'".into(),
            figure: format!("{foreign:.3}"),
            budget: "at least 1.0".into(),
            met: foreign >= 1.0,
            timed: true,
        },
        fresh_line(results, Algorithm::RS256, 2.5),
        fresh_line(results, Algorithm::ES256, 3.0),
        fresh_line(results, Algorithm::EdDSA, 2.0),
        Line {
            what: "Module size".into(),
            figure: format!("{module_bytes} bytes"),
            budget: "under 600,000 bytes".into(),
            met: module_bytes < 600_000,
            timed: false,
        },
        Line {
            what: "Envoy's resident memory with wsgate minus with the do-nothing filter, after the requests".into(),
            figure: memory_gap.map_or("not measured".into(), |gap| format!("{gap:.1} MiB (below)")),
            budget: "at most 15 MiB".into(),
            met: memory_gap.is_some_and(|gap| gap <= 15.0),
            timed: false,
        },
        Line {
            what: "Ordinary GET while 10,000 sockets wait for their first message: requests per second over a wsgate Envoy's with the same configuration and none waiting".into(),
            figure: format!("{beside_waiting:.3} ({waiting_cpu:+.1} µs of user CPU per request)"),
            budget: "at least 0.97".into(),
            met: beside_waiting >= 0.97,
            timed: true,
        },
        Line {
            what: "Established socket: wsgate's messages per second over plain Envoy's".into(),
            figure: format!("{messages:.3}"),
            budget: "at least 0.95".into(),
            met: messages >= 0.95,
            timed: true,
        },
        Line {
            what: "Native build, ordinary GET: wsgate-module's added Envoy CPU (user space) per request over the native filters'".into(),
            figure: format!(
                "{native_get:.2} ({:.1} µs against {:.1} µs)",
                results.added_cpu(Workload::Get, native),
                results.added_cpu(Workload::Get, Variant::Native)
            ),
            budget: "at most 1.0".into(),
            met: native_get <= 1.0,
            timed: true,
        },
        Line {
            what: "Native build, repeated credential: wsgate-module's added CPU per handshake over the native filters'".into(),
            figure: format!(
                "{native_repeated:.2} ({:.1} µs against {:.1} µs)",
                results.added_cpu(Workload::RepeatedToken, native),
                results.added_cpu(Workload::RepeatedToken, Variant::Native)
            ),
            budget: "at most 0.5".into(),
            met: native_repeated <= 0.5,
            timed: true,
        },
        Line {
            what: "Native build, a new credential each time: wsgate-module's added CPU per handshake over jwt_authn's, the worst algorithm".into(),
            figure: native_fresh.map_or("not measured".into(), |(w, r)| format!("{r:.2} ({})", w.title())),
            budget: "at most 1.0 for each".into(),
            met: native_fresh.is_some_and(|(_, r)| r <= 1.0),
            timed: true,
        },
        Line {
            what: "Native build, foreign origin: wsgate-module's rejections per second over the native filters'".into(),
            figure: format!("{native_foreign:.3}"),
            budget: "at least 1.0".into(),
            met: native_foreign >= 1.0,
            timed: true,
        },
        Line {
            what: "Native build: Envoy's resident memory with wsgate-module minus plain Envoy's, after the requests".into(),
            figure: native_memory_gap.map_or("not measured".into(), |gap| format!("{gap:.1} MiB (below)")),
            budget: "at most 5 MiB".into(),
            met: native_memory_gap.is_some_and(|gap| gap <= 5.0),
            timed: false,
        },
        Line {
            what: "Native build, established socket: wsgate-module's messages per second over plain Envoy's".into(),
            figure: format!("{native_messages:.3}"),
            budget: "at least 0.98".into(),
            met: native_messages >= 0.98,
            timed: true,
        },
    ];
    let noisy = control.is_some_and(|(_, spread)| spread > A_A_BOUND);
    let _ = writeln!(out, "\n## Budget\n\n| line | measured | budget | |\n|---|---|---|---|");
    let _ = writeln!(
        out,
        "| A/A control: the do-nothing wasm filter in a second Envoy against the first, requests per second, the workload where they differ most | {} | within 3 % | {} |",
        control.map_or("not measured".into(), |(workload, spread)| format!("{:.1} % ({})", spread * 100.0, workload.title())),
        if noisy { "**too noisy to judge a line by a few %**" } else { "met" },
    );
    for line in &lines {
        let verdict = match (line.met, noisy) {
            // A workload left out (BENCH_ONLY) gives no figure.
            _ if line.figure.contains("NaN") => "not measured",
            (true, _) => "met",
            (false, true) if line.timed => "**missed** (in a noisy run)",
            (false, _) => "**missed**",
        };
        let _ = writeln!(out, "| {} | {} | {} | {verdict} |", line.what, line.figure, line.budget);
    }

    let _ = writeln!(
        out,
        "\n## Memory\n\nEnvoy's resident memory (MiB) on a new Envoy per variant: after its first burst of requests, and once it has served the run's count of ordinary GETs and allowed handshakes.\n\n| variant | after the first burst | at the end | growth |\n|---|---:|---:|---:|"
    );
    for m in memory {
        let growth = mib(m.after_kib) - mib(m.warm_kib);
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {growth:+.1} |",
            m.variant,
            mib(m.warm_kib),
            mib(m.after_kib)
        );
    }
    let rounds: Vec<String> =
        after_rounds.iter().map(|(variant, kib)| format!("{variant} {:.1}", mib(*kib))).collect();
    let _ = writeln!(out, "\nAfter the rounds (every workload): {} MiB.", rounds.join(", "));

    let _ = writeln!(
        out,
        "\n## A new credential each time\n\nEnvoy's user-space CPU per handshake above plain Envoy's, in µs (medians over rounds).\n\n| algorithm | wsgate | wsgate-module | native | wsgate over native | wsgate-module over native |\n|---|---:|---:|---:|---:|---:|"
    );
    let measured: Vec<Workload> = crate::Workload::all()
        .into_iter()
        .filter(|w| results.of(*w, Variant::Wsgate).next().is_some())
        .collect();
    for &workload in measured.iter().filter(|w| matches!(w, Workload::NewToken(_))) {
        let Workload::NewToken(algorithm) = workload else { continue };
        let _ = writeln!(
            out,
            "| {algorithm:?} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            results.added_cpu(workload, Variant::Wsgate),
            results.added_cpu(workload, native),
            results.added_cpu(workload, Variant::Native),
            results.added_cpu_ratio(workload, Variant::Wsgate),
            results.added_cpu_ratio(workload, native),
        );
    }

    if !waiting.is_empty() {
        let _ = writeln!(
            out,
            "\n## {WAITING_TITLE}\n\nTwo wsgate Envoys with the same configuration, whose `/wait` policy takes the credential from the first message: one holds 10,000 HTTP/2 WebSockets open on `/wait` and waiting all along, the other none; each round measures ordinary GETs on both.\n\n| round | requests/s, none waiting | with 10,000 waiting | ratio | user CPU µs per request, none | with 10,000 |\n|---:|---:|---:|---:|---:|---:|"
        );
        for (round, (none, held)) in waiting.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {round} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} |",
                none.per_second,
                held.per_second,
                held.per_second / none.per_second,
                none.user_us,
                held.user_us
            );
        }
    }

    if !rules.is_empty() {
        rules_table(&mut out, rules);
    }
    before_table(&mut out, results);

    let _ = writeln!(out, "\n## Every workload");
    for &workload in &measured {
        workload_table(&mut out, results, workload);
    }
    Rendered { markdown: out, all_met: lines.iter().all(|line| line.met) }
}

/// How far apart the two do-nothing wasm Envoys are, the worst workload: `|1 - ratio|` of their
/// answers per second (the median of the rounds' ratios).
fn a_a_control(results: &Results) -> Option<(Workload, f64)> {
    crate::Workload::all()
        .into_iter()
        .filter(|w| results.of(*w, Variant::NoopAgain).next().is_some())
        .map(|w| (w, (1.0 - results.ratio(w, Variant::NoopAgain, Variant::Noop, per_second)).abs()))
        .max_by(worst)
}

/// Orders workloads by their figure, for the one where it is largest.
fn worst(a: &(Workload, f64), b: &(Workload, f64)) -> std::cmp::Ordering {
    a.1.total_cmp(&b.1)
}

/// The A/A control's bound: within it, a line's verdict is the run's; past it, the figures of two
/// Envoys running the same thing differ by more than a few lines' margins.
const A_A_BOUND: f64 = 0.03;

/// A new credential each time: wsgate's added CPU per handshake over `jwt_authn`'s, at most `bound`.
fn fresh_line(results: &Results, algorithm: Algorithm, bound: f64) -> Line {
    let workload = Workload::NewToken(algorithm);
    let ratio = results.added_cpu_ratio(workload, Variant::Wsgate);
    Line {
        what: format!(
            "A new {algorithm:?} token each time: wsgate's added CPU (user space) per handshake over jwt_authn's"
        )
        .into(),
        figure: format!(
            "{ratio:.2} ({:.1} µs against {:.1} µs)",
            results.added_cpu(workload, Variant::Wsgate),
            results.added_cpu(workload, Variant::Native)
        ),
        budget: format!("at most {bound}").into(),
        met: ratio <= bound,
        timed: true,
    }
}

/// A step measured in the same run (`WSGATE_WASM_BEFORE`): per workload, the module of this
/// build against the one before it.
fn before_table(out: &mut String, results: &Results) {
    let measured: Vec<Workload> = crate::Workload::all()
        .into_iter()
        .filter(|w| results.of(*w, Variant::WsgateBefore).next().is_some())
        .collect();
    if measured.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Before and after\n\nwsgate-before is `WSGATE_WASM_BEFORE`, wsgate the module measured; both with the same configuration, in the same rounds.\n\n| workload | answers/s, before | after | after over before | user CPU µs per answer, before | after | after minus before |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for workload in measured {
        let (before, after) = (Variant::WsgateBefore, Variant::Wsgate);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} | {:+.1} |",
            workload.title(),
            results.median_of(workload, before, per_second),
            results.median_of(workload, after, per_second),
            results.ratio(workload, after, before, per_second),
            results.median_of(workload, before, |m| m.user_us),
            results.median_of(workload, after, |m| m.user_us),
            results.median_per_round(workload, (after, before), |a, b| a.user_us - b.user_us),
        );
    }
}

/// The message rules' line: per build, messages per second with rules over without, and the
/// user CPU each message costs more; medians over rounds, and every round.
fn rules_table(out: &mut String, rounds: &[Vec<Measure>]) {
    let rules = std::env::var("BENCH_MESSAGE_RULES")
        .unwrap_or_else(|_| serde_json::to_string(&*crate::envoy::RULES).unwrap_or_default());
    let _ = writeln!(
        out,
        "\n## {RULES_TITLE}\n\nThe messages workload (1 KiB text messages, `{{\"type\":\"say\",...}}`, echoed) through each build without message rules and with these, in interleaved rounds:\n\n```json\n{rules}\n```\n\n| build | messages/s, no rules | with rules | ratio | user CPU µs per message, no rules | with rules | added |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    for (name, without, with) in [("wasm", 0, 1), ("native", 2, 3)] {
        let pick = |index: usize, figure: fn(&Measure) -> f64| -> f64 {
            median(rounds.iter().filter_map(|round| round.get(index).map(figure)).collect())
        };
        let ratio = median(
            rounds
                .iter()
                .filter_map(|round| Some(round.get(with)?.per_second / round.get(without)?.per_second))
                .collect(),
        );
        let added = median(
            rounds
                .iter()
                .filter_map(|round| Some(round.get(with)?.user_us - round.get(without)?.user_us))
                .collect(),
        );
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {ratio:.3} | {:.2} | {:.2} | {added:.2} |",
            pick(without, |m| m.per_second),
            pick(with, |m| m.per_second),
            pick(without, |m| m.user_us),
            pick(with, |m| m.user_us),
        );
    }
}

//! `wspoold-bench`: what wspoold costs, how fast it heals and how far it scales, each
//! figure against a baseline or a peer measured in the same run.
//!
//! - `report [--quick] [--out DIR]`: every benchmark below; writes
//!   `DIR/benchmarks.md` and `DIR/benchmarks.svg` (DIR defaults to `docs`).
//! - `idle N SECONDS`, `live N SECONDS`, `storm N`: one scale measurement, printed as
//!   a JSON line (the report runs each in a child process of its own).
//! - `floor threads|one-thread N SECONDS`: what N connections' heartbeats cost with
//!   wspoold taken out, as a JSON line (see `floor`).
//! - `heal FAULT N`: N faults of one kind under a wspoold session, each printed.
//! - `serve PORT`: the upstream child, an echo server that runs until its stdin closes.

use std::time::Instant;

mod client;
mod echo;
mod floor;
mod heal;
mod overhead;
mod peers;
mod report;
mod scale;

use echo::Fault;
use heal::System;

const USAGE: &str = "usage: wspoold-bench report [--quick] [--out DIR]
       wspoold-bench heal kill|reset|blackhole REPETITIONS
       wspoold-bench idle CONNECTIONS SECONDS
       wspoold-bench floor threads|one-thread CONNECTIONS SECONDS
       wspoold-bench live SESSIONS SECONDS
       wspoold-bench storm CONNECTIONS";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage(&format!("argument {i} must be a number")))
    };
    scale::raise_nofile();
    match args.first().map(String::as_str) {
        Some("report") => report(&args[1..]),
        Some("overhead") => overhead_child(number(1) as usize, args.iter().any(|a| a == "--pin")),
        Some("serve") => scale::serve(number(1) as u16),
        Some("idle") => scale::idle(number(1) as usize, number(2)),
        Some("live") => scale::live(number(1) as usize, number(2)),
        Some("storm") => scale::storm(number(1) as usize),
        Some("floor") => floor::floor(
            args.get(1).map_or("", String::as_str),
            number(2) as usize,
            number(3),
        ),
        Some("heal") => heal_child(args.get(1).map(String::as_str), number(2) as usize),
        _ => usage("no such benchmark"),
    }
}

/// `overhead TRIPS [--pin]`: every path measured, printed as a JSON line. With
/// `--pin`, this process and the peers it starts run on CPU 0 only.
fn overhead_child(trips: usize, pin: bool) {
    if pin {
        // SAFETY: a zeroed cpu_set_t with one bit set, passed with its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    // Pool settings to add, to see what one of them costs (WSPOOLD_BENCH_POOL).
    let extra = std::env::var("WSPOOLD_BENCH_POOL").unwrap_or_default();
    let echo = echo::Echo::start(0, None, false);
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for path in [
        Ok(peers::direct(&echo.url())),
        Ok(peers::wspoold(
            &echo.url(),
            &format!("min = 1\nspare = 1\n{extra}"),
            None,
        )),
        peers::websocat(&echo.url(), &[], ""),
        peers::nginx(echo.addr()),
        peers::haproxy(echo.addr()),
    ] {
        match path {
            Ok(path) => paths.push(path),
            Err(m) => missing.push(serde_json::json!({"name": m.name, "why": m.why})),
        }
    }
    let rows = overhead::measure_all(&paths, trips);
    drop(paths);
    let rows: Vec<_> = rows.iter().map(overhead::Overhead::to_json).collect();
    println!("{}", serde_json::json!({"rows": rows, "missing": missing}));
}

/// `heal kill|reset|blackhole N`: wspoold's heal after N faults, one line each, to
/// look at the outliers the report sums up.
fn heal_child(fault: Option<&str>, reps: usize) {
    let fault = match fault {
        Some("kill") => Fault::Kill,
        Some("reset") => Fault::Reset,
        Some("blackhole") => Fault::Silence,
        _ => usage("heal needs kill, reset or blackhole"),
    };
    let row = heal::run(System::Wspoold, fault, reps).unwrap_or_else(|m| usage(&m.why));
    let ms = |d: Option<std::time::Duration>| {
        d.map_or("-".to_string(), |d| {
            format!("{:.2}", d.as_secs_f64() * 1000.0)
        })
    };
    println!("rep  detect_ms  recover_ms  lost  duplicated  sent");
    for (i, rep) in row.reps.iter().enumerate() {
        println!(
            "{i:>3}  {:>9}  {:>10}  {:>4}  {:>10}  {:>4}",
            ms(rep.detect),
            ms(rep.recover),
            rep.lost,
            rep.duplicated,
            rep.sent
        );
    }
}

fn usage(why: &str) -> ! {
    eprintln!("wspoold-bench: {why}\n{USAGE}");
    std::process::exit(2);
}

/// Sizes of a full run, or of a quick one (a smoke test of the harness).
struct Plan {
    trips: usize,
    kills: usize,
    silences: usize,
    idle: Vec<usize>,
    idle_seconds: u64,
    live: usize,
    storm: usize,
}

fn report(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .map(|i| {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| usage("--out needs a directory"))
        })
        .unwrap_or_else(|| "docs".to_string());
    let plan = if quick {
        Plan {
            trips: 2_000,
            kills: 3,
            silences: 1,
            idle: vec![1_000],
            idle_seconds: 3,
            live: 200,
            storm: 200,
        }
    } else {
        Plan {
            trips: 20_000,
            kills: 100,
            silences: 5,
            idle: vec![1_000, 5_000, 10_000],
            idle_seconds: 10,
            live: 1_000,
            storm: 1_000,
        }
    };
    let started = Instant::now();
    let mut command = "cargo run --release --bin wspoold-bench -- report".to_string();
    if quick {
        command.push_str(" --quick");
    }

    let mut overhead = Vec::new();
    let mut missing = Vec::new();
    for pin in [false, true] {
        eprintln!(
            "overhead: {} round trips per path{}",
            plan.trips,
            if pin { ", every thread on CPU 0" } else { "" }
        );
        let trips = plan.trips.to_string();
        let mut args = vec!["overhead", trips.as_str()];
        if pin {
            args.push("--pin");
        }
        let v = scale::in_child(&args);
        let rows: Vec<overhead::Overhead> = v["rows"]
            .as_array()
            .map(|a| a.iter().map(overhead::Overhead::from_json).collect())
            .unwrap_or_default();
        overhead.push(rows);
        if !pin {
            missing = v["missing"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            (
                                m["name"].as_str().unwrap_or("?").to_string(),
                                m["why"].as_str().unwrap_or("?").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
    }

    let mut heal = Vec::new();
    for fault in [Fault::Kill, Fault::Reset, Fault::Silence] {
        let reps = if fault == Fault::Silence {
            plan.silences
        } else {
            plan.kills
        };
        for system in [System::Wspoold, System::Websocat] {
            eprintln!("heal: {} × {fault:?}, {}", reps, system.label());
            match heal::run(system, fault, reps) {
                Ok(row) => heal.push(row),
                Err(m) => eprintln!("  not measured: {}", m.why),
            }
        }
    }

    let sizes: Vec<usize> = plan.idle.iter().map(|n| (*n).min(idle_fit())).collect();
    let mut idle = Vec::new();
    for n in &sizes {
        eprintln!("scale: {n} idle connections");
        idle.push(scale::in_child(&[
            "idle",
            &n.to_string(),
            &plan.idle_seconds.to_string(),
        ]));
    }
    let mut floors = Vec::new();
    if let Some(n) = sizes.last() {
        for design in ["threads", "one-thread"] {
            eprintln!("floor: {n} connections' heartbeats, {design}");
            floors.push(scale::in_child(&[
                "floor",
                design,
                &n.to_string(),
                &plan.idle_seconds.to_string(),
            ]));
        }
    }
    eprintln!("scale: {} live sessions", plan.live);
    let live = scale::in_child(&[
        "live",
        &plan.live.to_string(),
        &plan.idle_seconds.to_string(),
    ]);
    eprintln!("storm: {} connections killed at once", plan.storm);
    let storm = scale::in_child(&["storm", &plan.storm.to_string()]);

    let results = report::Results {
        command,
        machine: machine(),
        overhead,
        missing,
        heal,
        idle,
        floors,
        live,
        storm,
        took: started.elapsed(),
    };
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("cannot create {out}: {e}"));
    let md = format!("{out}/benchmarks.md");
    let svg = format!("{out}/benchmarks.svg");
    std::fs::write(&md, report::markdown(&results))
        .unwrap_or_else(|e| panic!("cannot write {md}: {e}"));
    std::fs::write(&svg, report::svg(&results))
        .unwrap_or_else(|e| panic!("cannot write {svg}: {e}"));
    eprintln!(
        "wrote {md} and {svg} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The largest idle pool that fits under the hard limit on open files: one
/// descriptor per pooled connection (its socket), some to spare, in steps of 500.
fn idle_fit() -> usize {
    (nofile_hard().saturating_sub(400) / 500 * 500) as usize
}

/// The hard limit on open files.
fn nofile_hard() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_max
}

/// The machine and the programs measured, for the report.
fn machine() -> Vec<(String, String)> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / (1 << 20) as f64)
        });
    let mut rows = vec![
        ("CPU".to_string(), format!("{cpu}, {cores} cores")),
        ("memory".into(), memory),
        (
            "kernel".into(),
            format!("Linux {}", read("/proc/sys/kernel/osrelease").trim()),
        ),
        (
            "open-file limit".into(),
            format!(
                "{} (hard; a descriptor per pooled connection, so the largest idle run is {fit})",
                nofile_hard(),
                fit = idle_fit()
            ),
        ),
        (
            "wspoold".into(),
            format!(
                "{} (release build, in the bench process)",
                env!("CARGO_PKG_VERSION")
            ),
        ),
    ];
    for program in ["websocat", "nginx", "haproxy"] {
        let version =
            peers::version(program).unwrap_or_else(|why| format!("not installed ({why})"));
        rows.push((program.to_string(), version));
    }
    rows
}

//! `bench tpch`: TPC-H queries on autopipe (embedded and as a deployed cluster),
//! single-process DataFusion, Spark local[N] and DuckDB, on the same Parquet files.
//! Every engine writes each result as Parquet into a fresh directory. The first run of
//! each query on each engine is checked against DuckDB (order-insensitive, numbers with
//! a tolerance) and is not timed; a wrong answer or an error is a FAIL and never timed.
//! Timed repetitions alternate the engines (A B C … A B C …) so drift hits all of them.

#[cfg(feature = "ballista")]
pub mod ballista;
pub mod engines;

use anyhow::{bail, Context, Result};
use engines::{Engine, Setup};
use integration_tests::oracle::{assert_same, parquet_rows};
use integration_tests::tpch::{self as datagen, QUERIES};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// `bench tpch` options.
pub struct Args {
    /// scale factor
    pub sf: f64,
    /// 1-based query numbers
    pub queries: Vec<usize>,
    /// engine names, in run order
    pub engines: Vec<String>,
    /// timed repetitions per query and engine
    pub reps: usize,
    /// run (and check) each query once untimed first
    pub warmup: bool,
    /// threads of the single-node engines
    pub threads: usize,
    /// autopipe workers
    pub workers: usize,
    /// slots per autopipe worker
    pub slots: u32,
    /// data, venv and outputs
    pub dir: PathBuf,
    /// also write the markdown table here
    pub report: Option<PathBuf>,
}

/// Parses `all` or a list like `1,3,5-7`.
pub fn parse_queries(s: &str) -> Result<Vec<usize>> {
    if s == "all" {
        return Ok((1..=22).collect());
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.trim_start_matches(['q', 'Q'])
                .parse()
                .context(format!("query '{part}'"))?,
            b.trim_start_matches(['q', 'Q'])
                .parse()
                .context(format!("query '{part}'"))?,
        );
        if a < 1 || b > 22 || a > b {
            bail!("query '{part}': TPC-H queries are 1 to 22");
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        bail!("no queries selected");
    }
    Ok(out)
}

/// One engine's outcome on one query.
enum Outcome {
    Times(Vec<Duration>),
    Fail(String),
}

fn median_min_max(v: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn geomean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// Runs the suite and prints the table.
pub fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let data = datagen::ensure(&dir, args.sf, false)?;
    let rt = tokio::runtime::Runtime::new()?;
    let setup = Setup {
        data: &data,
        dir: &dir,
        threads: args.threads,
        workers: args.workers,
        slots: args.slots,
        rt: &rt,
    };
    let mut engines: Vec<(String, Engine)> = Vec::new();
    let mut skipped = Vec::new();
    for name in &args.engines {
        match Engine::start(name, &setup) {
            Ok(e) => engines.push((name.clone(), e)),
            Err(e) => {
                eprintln!("skipping {name}: {e:#}");
                skipped.push(format!("{name}: {e:#}"));
            }
        }
    }
    if engines.is_empty() {
        bail!("no engine could start");
    }
    let reference = if engines.iter().any(|(n, _)| n == "duckdb") {
        "duckdb"
    } else {
        eprintln!("DuckDB is not running: results are checked against DataFusion instead");
        "datafusion"
    };
    let outs = dir.join("out");
    let mut results: BTreeMap<(usize, String), Outcome> = BTreeMap::new();
    for &q in &args.queries {
        let sql = QUERIES[q - 1];
        let out_of = |name: &str| outs.join(name).join(format!("q{q}"));
        // The checked run: every engine once, compared with the reference.
        for (name, e) in engines.iter_mut().filter(|_| args.warmup) {
            let r = e.run(&setup, q, sql, &out_of(name));
            if let Err(err) = r {
                results.insert((q, name.clone()), Outcome::Fail(format!("error: {err:#}")));
            }
        }
        let expected = match results.get(&(q, reference.to_string())) {
            Some(Outcome::Fail(e)) => {
                eprintln!("q{q}: the reference {reference} failed ({e}); answers unchecked");
                None
            }
            _ if args.warmup && engines.iter().any(|(n, _)| n == reference) => {
                match rt.block_on(parquet_rows(&out_of(reference))) {
                    Ok(rows) => Some(rows),
                    Err(e) => {
                        let msg = format!("its output is unreadable: {e:#}");
                        eprintln!("q{q}: the reference {reference}: {msg}; answers unchecked");
                        results.insert((q, reference.to_string()), Outcome::Fail(msg));
                        None
                    }
                }
            }
            _ => None,
        };
        for (name, _) in &engines {
            if results.contains_key(&(q, name.clone())) || name == reference {
                continue;
            }
            if let Some(exp) = &expected {
                let check = rt
                    .block_on(parquet_rows(&out_of(name)))
                    .and_then(|actual| assert_same(&format!("q{q} {name}"), exp.clone(), actual));
                if let Err(e) = check {
                    results.insert(
                        (q, name.clone()),
                        Outcome::Fail(format!("wrong answer: {e:#}")),
                    );
                }
            }
        }
        for rep in 0..args.reps {
            for (name, e) in engines.iter_mut() {
                let key = (q, name.clone());
                if let Some(Outcome::Fail(_)) = results.get(&key) {
                    continue;
                }
                match e.run(&setup, q, sql, &out_of(name)) {
                    Ok(d) => match results.entry(key).or_insert(Outcome::Times(vec![])) {
                        Outcome::Times(v) => v.push(d),
                        Outcome::Fail(_) => unreachable!("failed engines are skipped"),
                    },
                    Err(err) => {
                        results.insert(key, Outcome::Fail(format!("error in rep {rep}: {err:#}")));
                    }
                }
            }
        }
        let line: Vec<String> = engines
            .iter()
            .map(|(n, _)| match results.get(&(q, n.clone())) {
                Some(Outcome::Times(v)) => format!("{n} {:.3}s", median_min_max(v).0),
                Some(Outcome::Fail(_)) => format!("{n} FAIL"),
                None => format!("{n} -"),
            })
            .collect();
        eprintln!("q{q}: {}", line.join(", "));
    }
    let names: Vec<String> = engines.iter().map(|(n, _)| n.clone()).collect();
    drop(engines);
    let report = render(&args, &names, &results, &skipped, reference);
    print!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, &report)?;
    }
    Ok(())
}

fn render(
    args: &Args,
    names: &[String],
    results: &BTreeMap<(usize, String), Outcome>,
    skipped: &[String],
    reference: &str,
) -> String {
    let base = names
        .iter()
        .find(|n| n.starts_with("autopipe"))
        .cloned()
        .unwrap_or_else(|| names[0].clone());
    let median = |q: usize, n: &str| match results.get(&(q, n.to_string())) {
        Some(Outcome::Times(v)) if !v.is_empty() => Some(median_min_max(v)),
        _ => None,
    };
    let mut s = String::new();
    let check = if args.warmup {
        format!("answers checked against {reference}")
    } else {
        "answers not checked (--no-warmup)".to_string()
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(
        s,
        "\nTPC-H SF{} · {} timed reps · {cores} cores · single-node engines {} threads · autopipe {} workers × {} slots · {check}\n",
        args.sf, args.reps, args.threads, args.workers, args.slots
    );
    let _ = writeln!(s, "Seconds: median (min–max), and ratio to {base}.\n");
    let _ = writeln!(s, "| query | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(names.len()));
    let mut failures = Vec::new();
    for &q in &args.queries {
        let b = median(q, &base).map(|m| m.0);
        let cells: Vec<String> = names
            .iter()
            .map(|n| match (results.get(&(q, n.clone())), median(q, n)) {
                (_, Some((m, lo, hi))) => {
                    let ratio = match b {
                        Some(b) if *n != base => format!(" · {:.2}×", m / b),
                        _ => String::new(),
                    };
                    format!("{m:.3} ({lo:.3}–{hi:.3}){ratio}")
                }
                (Some(Outcome::Fail(e)), _) => {
                    failures.push(format!("q{q} {n}: {}", e.lines().next().unwrap_or("")));
                    "FAIL".into()
                }
                _ => "–".into(),
            })
            .collect();
        let _ = writeln!(s, "| q{q} | {} |", cells.join(" | "));
    }
    // Geometric means over the queries every engine answered.
    let common: Vec<usize> = args
        .queries
        .iter()
        .copied()
        .filter(|&q| names.iter().all(|n| median(q, n).is_some()))
        .collect();
    if !common.is_empty() {
        let g: Vec<f64> = names
            .iter()
            .map(|n| {
                geomean(
                    &common
                        .iter()
                        .map(|&q| median(q, n).expect("common").0)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let bi = names.iter().position(|n| *n == base).unwrap_or(0);
        let cells: Vec<String> = g
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i == bi {
                    format!("{v:.3}")
                } else {
                    format!("{v:.3} · {:.2}×", v / g[bi])
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "| geomean ({} queries) | {} |",
            common.len(),
            cells.join(" | ")
        );
        let totals: Vec<String> = names
            .iter()
            .map(|n| {
                let t: f64 = common
                    .iter()
                    .map(|&q| median(q, n).expect("common").0)
                    .sum();
                format!("{t:.3}")
            })
            .collect();
        let _ = writeln!(
            s,
            "| total ({} queries) | {} |",
            common.len(),
            totals.join(" | ")
        );
        let _ = writeln!(s);
        for (i, n) in names.iter().enumerate() {
            if i != bi {
                let _ = writeln!(s, "{base} / {n} = {:.2}× (geometric mean)", g[bi] / g[i]);
            }
        }
    }
    for f in &failures {
        let _ = writeln!(s, "FAIL {f}");
    }
    for k in skipped {
        let _ = writeln!(s, "skipped {k}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_lists_parse_and_bad_ones_are_named() {
        assert_eq!(parse_queries("all").unwrap().len(), 22);
        assert_eq!(parse_queries("1,3,5-7").unwrap(), vec![1, 3, 5, 6, 7]);
        assert_eq!(parse_queries("q18").unwrap(), vec![18]);
        assert!(parse_queries("23")
            .unwrap_err()
            .to_string()
            .contains("'23'"));
        assert!(parse_queries("x").is_err());
    }
}

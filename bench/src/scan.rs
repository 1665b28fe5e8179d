//! `bench scan`: the cost of tolerant CSV reading. The same aggregation over the same
//! CSV file, single-process, with DataFusion's own CSV reader (which fails on a bad
//! record) against autopipe's tolerant scan (which sends bad records to the dead
//! letters), alternating per repetition; then the tolerant scan over a copy of the
//! file with 1% malformed rows. Prints medians and the ratios.
//!
//! Run: `cargo build --release -p bench && target/release/bench scan --rows 5000000`

use crate::median;
use anyhow::Result;
use autopipe_common::session::context_with;
use autopipe_common::spec::PipelineSpec;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `bench scan`.
pub struct Args {
    pub rows: u64,
    pub reps: usize,
    pub partitions: usize,
    pub dir: PathBuf,
}

fn write_csv(path: &Path, rows: u64, bad_every: Option<u64>) -> Result<u64> {
    if path.exists() {
        return Ok(rows / bad_every.unwrap_or(u64::MAX).max(1));
    }
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    writeln!(w, "id,customer,amount,note")?;
    let mut bad = 0;
    for i in 0..rows {
        if bad_every.is_some_and(|n| i % n == n - 1) {
            bad += 1;
            match i % 3 {
                0 => writeln!(w, "{i},c{}", i % 1000)?,
                1 => writeln!(w, "{i},c{},n/a,x", i % 1000)?,
                _ => writeln!(w, "{i},c{},{}.5,x,extra", i % 1000, i % 97)?,
            }
        } else {
            writeln!(
                w,
                "{i},c{},{}.{:02},note number {}",
                i % 1000,
                i % 997,
                i % 100,
                i % 7
            )?;
        }
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(bad)
}

fn spec(file: &Path) -> Result<PipelineSpec> {
    let text = format!(
        r#"
[job]
name = "scan"
[[sources]]
name = "t"
format = "csv"
path = "{}"
schema = "id BIGINT, customer VARCHAR, amount DOUBLE, note VARCHAR"
[transform]
sql = "SELECT customer, count(*) AS n, sum(amount) AS total FROM t GROUP BY customer"
[sink]
format = "parquet"
path = "/tmp/unused"
"#,
        file.display()
    );
    Ok(PipelineSpec::parse(&text, "bench")?.normalize(Path::new("/"), "bench")?)
}

async fn run_once(
    spec: &PipelineSpec,
    partitions: usize,
    tolerant: bool,
) -> Result<(Duration, u64)> {
    let t0 = Instant::now();
    let ctx = context_with(spec, partitions, tolerant).await?;
    let batches = ctx.sql(&spec.transform.sql).await?.collect().await?;
    let groups = batches.iter().map(|b| b.num_rows() as u64).sum();
    Ok((t0.elapsed(), groups))
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.join("scan");
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let clean = dir.join(format!("clean-{}.csv", a.rows));
    let dirty = dir.join(format!("dirty-{}.csv", a.rows));
    write_csv(&clean, a.rows, None)?;
    let bad = write_csv(&dirty, a.rows, Some(100))?;
    let size = std::fs::metadata(&clean)?.len();
    println!(
        "{} rows, {:.0} MiB of CSV, {} partitions, {} reps",
        a.rows,
        size as f64 / (1 << 20) as f64,
        a.partitions,
        a.reps
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.partitions.max(1))
        .enable_all()
        .build()?;
    let (clean_spec, dirty_spec) = (spec(&clean)?, spec(&dirty)?);
    let (mut native, mut tolerant, mut dirty_t) = (vec![], vec![], vec![]);
    rt.block_on(async {
        // warm the page cache
        run_once(&clean_spec, a.partitions, false).await?;
        for _ in 0..a.reps {
            let (t, g1) = run_once(&clean_spec, a.partitions, false).await?;
            native.push(t);
            let (t, g2) = run_once(&clean_spec, a.partitions, true).await?;
            assert_eq!(g1, g2, "both readers see the same groups");
            tolerant.push(t);
            dirty_t.push(run_once(&dirty_spec, a.partitions, true).await?.0);
        }
        anyhow::Ok(())
    })?;
    let (n, t, d) = (median(native), median(tolerant), median(dirty_t));
    println!("| reader | input | median (s) |");
    println!("| --- | --- | --- |");
    println!("| DataFusion CSV | clean | {:.3} |", n.as_secs_f64());
    println!("| autopipe tolerant | clean | {:.3} |", t.as_secs_f64());
    println!(
        "| autopipe tolerant | 1% bad ({bad} rows to the dead letters) | {:.3} |",
        d.as_secs_f64()
    );
    println!(
        "tolerant / DataFusion (clean): {:.2}x; dirty / clean (tolerant): {:.2}x",
        t.as_secs_f64() / n.as_secs_f64(),
        d.as_secs_f64() / t.as_secs_f64()
    );
    Ok(())
}

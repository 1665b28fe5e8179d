//! TPC-H: the 22 queries and the data as Parquet, generated with the `tpchgen` crates
//! (the generator behind `tpchgen-cli`) and cached:
//! `<dir>/tpch-sf<SF>/<table>/part-<i>.parquet`, complete once `_SUCCESS` exists.
//! Used by the TPC-H correctness test and by `bench tpch`.

use anyhow::{Context, Result};
use datafusion::arrow::record_batch::RecordBatchReader;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

macro_rules! queries {
    ($($n:literal),*) => { [$(include_str!(concat!("../tpch/q", $n, ".sql"))),*] };
}

/// TPC-H queries 1–22 with the specification's validation parameters. Q15's view is a
/// common table expression; output columns are all named so every engine can write them.
pub const QUERIES: [&str; 22] =
    queries!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22);

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = [
    "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
];

/// Files per table: the big tables get several so that every engine can scan them in
/// parallel without splitting inside a file.
fn parts_for(table: &str, sf: f64, threads: usize) -> i32 {
    let base = match table {
        "lineitem" => 4.0 * sf,
        "orders" => sf,
        "partsupp" | "part" | "customer" => 0.5 * sf,
        _ => 0.0,
    };
    (base.ceil() as i32).max(if base > 0.0 { threads as i32 } else { 1 })
}

fn reader(table: &str, sf: f64, part: i32, parts: i32) -> Box<dyn RecordBatchReader + Send> {
    match table {
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, parts))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, parts))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, parts))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(sf, part, parts))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, parts))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, parts))),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts))),
        other => unreachable!("unknown TPC-H table {other}"),
    }
}

fn write_part(path: &Path, reader: Box<dyn RecordBatchReader + Send>) -> Result<()> {
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(file, reader.schema(), Some(props))?;
    for batch in reader {
        w.write(&batch?)?;
    }
    w.close()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Returns the data directory for `sf`, generating it first when it is not cached.
pub fn ensure(dir: &Path, sf: f64, quiet: bool) -> Result<PathBuf> {
    let data = dir.join(format!("tpch-sf{sf}"));
    if data.join("_SUCCESS").exists() {
        return Ok(data);
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut jobs = Vec::new();
    for t in TABLES {
        let parts = parts_for(t, sf, threads);
        let tdir = data.join(t);
        let _ = std::fs::remove_dir_all(&tdir);
        std::fs::create_dir_all(&tdir)?;
        for p in 1..=parts {
            jobs.push((t, p, parts, tdir.join(format!("part-{p}.parquet"))));
        }
    }
    if !quiet {
        eprintln!(
            "generating TPC-H SF{sf} ({} files) into {} with {threads} threads ...",
            jobs.len(),
            data.display()
        );
    }
    let start = Instant::now();
    // Biggest first, so the long lineitem parts do not end up alone at the tail.
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((t, p, parts, path)) = jobs.get(i) else {
                            return Ok(());
                        };
                        write_part(path, reader(t, sf, *p, *parts))?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("generator thread panicked")?;
        }
        Ok(())
    })?;
    std::fs::write(data.join("_SUCCESS"), b"")?;
    if !quiet {
        eprintln!("generated in {:.1}s", start.elapsed().as_secs_f64());
    }
    Ok(data)
}

/// An autopipe spec for query `q`: the eight tables under `data` as Parquet sources,
/// `sql` as the transform, a Parquet sink at `out` (overwritten).
pub fn spec_toml(data: &Path, q: usize, sql: &str, out: &Path) -> String {
    let mut t = format!("[job]\nname = \"tpch-q{q}\"\n\n");
    for table in TABLES {
        t += &format!(
            "[[sources]]\nname = \"{table}\"\nformat = \"parquet\"\npath = \"{}\"\n\n",
            data.join(table).display()
        );
    }
    t += &format!("[transform]\nsql = \"\"\"\n{sql}\n\"\"\"\n\n");
    t += &format!(
        "[sink]\nformat = \"parquet\"\npath = \"{}\"\nmode = \"overwrite\"\n",
        out.display()
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_is_embedded() {
        assert!(QUERIES.iter().all(|q| q.contains("select")));
        assert!(QUERIES[14].contains("with revenue0"));
    }

    #[test]
    fn big_tables_get_several_files_small_ones_one() {
        assert_eq!(parts_for("lineitem", 1.0, 2), 4);
        assert_eq!(parts_for("lineitem", 10.0, 16), 40);
        assert_eq!(parts_for("orders", 0.01, 2), 2);
        assert_eq!(parts_for("nation", 10.0, 16), 1);
        assert_eq!(parts_for("supplier", 1.0, 16), 1);
    }
}

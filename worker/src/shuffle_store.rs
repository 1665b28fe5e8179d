//! The worker's shuffle directory: one Arrow IPC file per (map task attempt, output
//! partition) under `work_dir/shuffle/<job>/<stage>/<task>-<attempt>/<partition>.arrow`.
//! Every partition file is written, empty ones too, so a missing file always means
//! lost output (never "no rows").

use crate::metrics::WorkerMetrics;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;

/// Shuffle files of this worker.
pub struct ShuffleStore {
    /// `work_dir/shuffle`
    pub root: PathBuf,
    /// worker metrics
    pub metrics: Arc<WorkerMetrics>,
}

impl ShuffleStore {
    /// Directory of one map task attempt.
    pub fn task_dir(&self, job: &str, stage: u32, task: u32, attempt: u32) -> PathBuf {
        self.root
            .join(sanitize(job))
            .join(stage.to_string())
            .join(format!("{task}-{attempt}"))
    }

    /// File of one output partition.
    pub fn partition_file(
        &self,
        job: &str,
        stage: u32,
        task: u32,
        attempt: u32,
        part: u32,
    ) -> PathBuf {
        self.task_dir(job, stage, task, attempt)
            .join(format!("{part}.arrow"))
    }

    /// Deletes every shuffle file of `job`.
    pub fn remove_job(&self, job: &str) {
        let _ = std::fs::remove_dir_all(self.root.join(sanitize(job)));
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the partitions of one map task attempt.
pub struct PartitionWriters {
    writers: Vec<FileWriter<BufWriter<File>>>,
    paths: Vec<PathBuf>,
    rows: Vec<u64>,
}

impl PartitionWriters {
    /// Creates `n` empty partition files in `dir` (replacing an earlier attempt's leftovers).
    pub fn create(dir: PathBuf, n: usize, schema: &SchemaRef) -> datafusion::error::Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut writers = Vec::with_capacity(n);
        let mut paths = Vec::with_capacity(n);
        for p in 0..n {
            let path = dir.join(format!("{p}.arrow"));
            let f = BufWriter::new(File::create(&path)?);
            writers.push(FileWriter::try_new(f, schema)?);
            paths.push(path);
        }
        Ok(Self {
            writers,
            paths,
            rows: vec![0; n],
        })
    }

    /// Appends a batch to partition `p`.
    pub fn write(&mut self, p: usize, batch: &RecordBatch) -> datafusion::error::Result<()> {
        self.rows[p] += batch.num_rows() as u64;
        self.writers[p].write(batch)?;
        Ok(())
    }

    /// Finishes every file; returns (rows, bytes) per partition.
    pub fn finish(mut self) -> datafusion::error::Result<Vec<(u64, u64)>> {
        let mut out = Vec::with_capacity(self.writers.len());
        for (i, w) in self.writers.iter_mut().enumerate() {
            w.finish()?;
            let bytes = std::fs::metadata(&self.paths[i])
                .map(|m| m.len())
                .unwrap_or(0);
            out.push((self.rows[i], bytes));
        }
        Ok(out)
    }
}

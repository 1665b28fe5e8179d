//! Input splits: what a job's file sources hold (files, sizes, and for Parquet the
//! row groups in each footer), and the scan tasks built from them.
//!
//! The coordinator lists the sources at submit (`list_sources`), its
//! `optimizer::partitions` rule turns the listing into `InputSplits` (groups of file
//! byte ranges, one group per scan task), and `session::context_for_splits` makes each
//! source's scan read exactly those groups: a Parquet source's `DataSourceExec` gets
//! them as its file groups (`SplitTable`), a CSV/NDJSON source's `TolerantScanExec`
//! as its partitions. A Parquet range reads the row groups whose first page starts in
//! it (DataFusion's rule), so ranges cut at row-group starts read each row group once.

use crate::error::{Error, Result};
use crate::spec::{Format, PipelineSpec};
use crate::store::{glob_prefix, list_glob, register_stores};
use crate::tolerant::FileRange;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Statistics;
use datafusion::datasource::listing::{ListingTableUrl, PartitionedFile};
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::ObjectMeta;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A Parquet row group, where it lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowGroup {
    /// offset of its first page (column 0's dictionary page, else its first data page):
    /// the offset DataFusion tests against a file range
    pub start: u64,
    /// compressed bytes
    pub bytes: u64,
}

/// One listed input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// object path in its store (as `ObjectMeta::location` prints it)
    pub location: String,
    /// bytes
    pub size: u64,
    /// the row groups in file order, for Parquet files whose footer was read (those
    /// big enough to be split); empty otherwise
    pub row_groups: Vec<RowGroup>,
}

/// A source's files, in the order its scan lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFiles {
    /// the `[[sources]]` name
    pub name: String,
    /// how its files are read
    pub format: Format,
    /// its files, sorted by location
    pub files: Vec<InputFile>,
}

/// The scan tasks of each source: per source name, groups of file ranges, one group
/// per task (partition) of its scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputSplits {
    /// source name → groups
    pub sources: BTreeMap<String, Vec<Vec<FileRange>>>,
}

/// Lists the files of every source as their scans will (same extension filter, globs
/// below their literal prefix), with the row groups of each Parquet file larger than
/// `footer_above` bytes read from its footer. Errors name the source.
pub async fn list_sources(spec: &PipelineSpec, footer_above: u64) -> Result<Vec<SourceFiles>> {
    let ctx = SessionContext::new();
    let urls: Vec<String> = spec.sources.iter().map(|s| s.path.clone()).collect();
    register_stores(&ctx.runtime_env(), &urls)?;
    let state = ctx.state();
    let mut out = Vec::with_capacity(spec.sources.len());
    for (i, s) in spec.sources.iter().enumerate() {
        let cannot_list = |e: &dyn std::fmt::Display| {
            Error::plan(
                format!("sources[{i}].path"),
                format!("cannot list {}: {e}", s.path),
            )
        };
        if s.format == Format::Delta {
            out.push(delta_files(s, &format!("sources[{i}]"), footer_above).await?);
            continue;
        }
        let ext = crate::session::file_extension(&s.path, s.format);
        let glob = glob_prefix(&s.path);
        let table_url = ListingTableUrl::parse(glob.map_or(s.path.as_str(), |(prefix, _)| prefix))
            .map_err(|e| cannot_list(&e))?;
        let store = ctx
            .runtime_env()
            .object_store(table_url.object_store())
            .map_err(|e| cannot_list(&e))?;
        let mut metas: Vec<ObjectMeta> = match glob {
            Some(_) => list_glob(store.as_ref(), &s.path, &ext).await?,
            None => table_url
                .list_all_files(&state, store.as_ref(), &ext)
                .await
                .map_err(|e| cannot_list(&e))?
                .try_collect()
                .await
                .map_err(|e| cannot_list(&e))?,
        };
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut files = Vec::with_capacity(metas.len());
        for m in &metas {
            let mut row_groups = vec![];
            if s.format == Format::Parquet && m.size > footer_above {
                row_groups = row_groups_of(store.as_ref(), m, &format!("sources[{i}]")).await?;
            }
            files.push(InputFile {
                location: m.location.to_string(),
                size: m.size,
                row_groups,
            });
        }
        out.push(SourceFiles {
            name: s.name.clone(),
            format: s.format,
            files,
        });
    }
    Ok(out)
}

/// The row groups of Parquet file `m`, from its footer; errors name the source `key`.
async fn row_groups_of(
    store: &dyn object_store::ObjectStore,
    m: &ObjectMeta,
    key: &str,
) -> Result<Vec<RowGroup>> {
    let md = DFParquetMetadata::new(store, m)
        .fetch_metadata()
        .await
        .map_err(|e| {
            Error::plan(
                format!("{key}.path"),
                format!("cannot read the Parquet footer of {}: {e}", m.location),
            )
        })?;
    Ok(md
        .row_groups()
        .iter()
        .filter(|rg| rg.num_columns() > 0)
        .map(|rg| {
            let col = rg.column(0);
            let start = col
                .dictionary_page_offset()
                .unwrap_or_else(|| col.data_page_offset());
            RowGroup {
                start: start.max(0) as u64,
                bytes: rg.compressed_size().max(0) as u64,
            }
        })
        .collect())
}

/// A delta source's files: those of its pinned snapshot (the latest when unpinned),
/// as its scan (`delta::DeltaScan`) lists them, with the row groups of those above
/// `footer_above` bytes.
async fn delta_files(
    s: &crate::spec::SourceSpec,
    key: &str,
    footer_above: u64,
) -> Result<SourceFiles> {
    let snap = crate::delta::source_snapshot(s, key).await?;
    let (store, _) = crate::store::store_for(&crate::store::parse_url(&s.path)?)?;
    let mut files = Vec::with_capacity(snap.files.len());
    for f in &snap.files {
        let m = &f.object_meta;
        let row_groups = if m.size > footer_above {
            row_groups_of(store.as_ref(), m, key).await?
        } else {
            vec![]
        };
        files.push(InputFile {
            location: m.location.to_string(),
            size: m.size,
            row_groups,
        });
    }
    Ok(SourceFiles {
        name: s.name.clone(),
        format: Format::Parquet,
        files,
    })
}

/// A file table whose scan reads the given groups of file ranges, one partition per
/// group, instead of the groups its inner `ListingTable` would make. Files the inner
/// scan pruned are left out; files it lists that no group names (none, when the
/// groups were made from the same listing) form one more group, so nothing is lost.
#[derive(Debug)]
pub struct SplitTable {
    inner: Arc<dyn TableProvider>,
    groups: Vec<Vec<FileRange>>,
}

impl SplitTable {
    /// `inner` (a listing table) read in `groups`.
    pub fn new(inner: Arc<dyn TableProvider>, groups: Vec<Vec<FileRange>>) -> Self {
        Self { inner, groups }
    }
}

/// `files` regrouped as `groups` say (see `SplitTable`); `None` when no group would
/// read anything (the scan keeps its own groups).
pub fn regroup(files: &[PartitionedFile], groups: &[Vec<FileRange>]) -> Option<Vec<FileGroup>> {
    let by_location: HashMap<String, &PartitionedFile> = files
        .iter()
        .map(|f| (f.object_meta.location.to_string(), f))
        .collect();
    let mut named = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(groups.len() + 1);
    for g in groups {
        let mut group = Vec::with_capacity(g.len());
        for r in g {
            let Some(f) = by_location.get(&r.location) else {
                continue;
            };
            named.insert(r.location.as_str());
            let mut f = (*f).clone();
            f.range = None;
            if r.start > 0 || r.end < f.object_meta.size {
                f = f.with_range(r.start as i64, r.end as i64);
            }
            group.push(f);
        }
        if !group.is_empty() {
            out.push(FileGroup::new(group));
        }
    }
    let rest: Vec<PartitionedFile> = files
        .iter()
        .filter(|f| !named.contains(f.object_meta.location.as_ref()))
        .cloned()
        .collect();
    if !rest.is_empty() {
        out.push(FileGroup::new(rest));
    }
    (!out.is_empty()).then_some(out)
}

#[async_trait]
impl TableProvider for SplitTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        let out = plan.transform_down(|p| {
            let Some(ds) = p.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(p));
            };
            let Some(fsc) = ds.data_source().downcast_ref::<FileScanConfig>() else {
                return Ok(Transformed::no(p));
            };
            let files: Vec<PartitionedFile> = fsc
                .file_groups
                .iter()
                .flat_map(|g| g.files().iter().cloned())
                .collect();
            match regroup(&files, &self.groups) {
                Some(groups) => {
                    let config = FileScanConfigBuilder::from(fsc.clone())
                        .with_file_groups(groups)
                        .build();
                    Ok(Transformed::yes(
                        DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
                    ))
                }
                None => Ok(Transformed::no(p)),
            }
        })?;
        Ok(out.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(location: &str, size: u64) -> PartitionedFile {
        PartitionedFile::new(location, size)
    }

    fn range(location: &str, start: u64, end: u64, size: u64) -> FileRange {
        FileRange {
            location: location.into(),
            start,
            end,
            size,
        }
    }

    #[test]
    fn regrouping_follows_the_groups_and_loses_no_listed_file() {
        let files = [file("a", 10), file("b", 100), file("c", 5)];
        let groups = vec![
            vec![range("a", 0, 10, 10), range("b", 0, 50, 100)],
            vec![range("b", 50, 100, 100)],
            // pruned by the scan: left out
            vec![range("gone", 0, 7, 7)],
        ];
        let out = regroup(&files, &groups).unwrap();
        type Shape = Vec<Vec<(String, Option<(i64, i64)>)>>;
        let shape: Shape = out
            .iter()
            .map(|g| {
                g.files()
                    .iter()
                    .map(|f| {
                        (
                            f.object_meta.location.to_string(),
                            f.range.as_ref().map(|r| (r.start, r.end)),
                        )
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![("a".into(), None), ("b".into(), Some((0, 50)))],
                vec![("b".into(), Some((50, 100)))],
                // listed, named by no group
                vec![("c".into(), None)],
            ]
        );
        assert!(regroup(&[], &groups).is_none());
    }
}

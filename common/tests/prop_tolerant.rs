//! Bad input never panics the tolerant CSV and NDJSON scans (issue 11, §7): arbitrary
//! bytes, and bytes that look like CSV or NDJSON, read by a `TolerantScanExec` (the
//! scan's only public entry; its range decoder is private) with assorted schemas,
//! projections, delimiters and range splits. Each read ends in batches plus dead
//! letters or in an error, within a deadline: never a panic, never a hang.

use autopipe_common::tolerant::{
    split_ranges, DeadLetters, DeadRecord, RecordFormat, TolerantScanExec,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use proptest::prelude::*;
use proptest::sample::Index;
use std::sync::Arc;
use std::time::Duration;

/// A case that has not finished by then is stuck (they take milliseconds).
const DEADLINE: Duration = Duration::from_secs(20);

/// Column types a source schema can name (see `spec::parse_schema`).
fn types() -> Vec<DataType> {
    vec![
        DataType::Int64,
        DataType::Int32,
        DataType::Int8,
        DataType::Float64,
        DataType::Float32,
        DataType::Utf8,
        DataType::Boolean,
        DataType::Date32,
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        DataType::Decimal128(10, 2),
        DataType::Decimal128(38, 0),
    ]
}

/// A table schema, and the projection the scan reads (`Some(vec![])`: no column, as
/// for `count(*)`).
fn schema_and_projection() -> impl Strategy<Value = (SchemaRef, Option<Vec<usize>>)> {
    prop::collection::vec(prop::sample::select(types()), 1..5).prop_flat_map(|tys| {
        let schema: SchemaRef = Arc::new(Schema::new(
            tys.iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("c{i}"), t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let n = tys.len();
        let projection = prop_oneof![
            Just(None),
            Just(Some(vec![])),
            prop::sample::subsequence((0..n).collect::<Vec<_>>(), 1..=n).prop_map(Some),
        ];
        (Just(schema), projection)
    })
}

/// Delimiters a spec accepts: any single ASCII character, the odd ones included.
fn delimiter() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(vec![b',', b';', b'\t', b'|']),
        1 => prop::sample::select(vec![b'"', b'\n', b'\r', b'\0', b' ', b'\\', 0x7f]),
        1 => 0u8..0x80,
    ]
}

/// Records that look like CSV, as fields (joined with the scan's delimiter by
/// `render_csv`): values of each column type, quoted fields with delimiters, quotes
/// and newlines inside, unterminated quotes and stray bytes.
fn csv_like() -> impl Strategy<Value = (Vec<Vec<Vec<u8>>>, &'static [u8])> {
    let field = prop_oneof![
        4 => prop::sample::select(vec![
            &b"1"[..],
            b"-42",
            b"3.25",
            b"1e400",
            b"NaN",
            b"true",
            b"2024-01-01",
            b"2024-02-30",
            b"2024-01-01T00:00:00Z",
            b"99999999999999999999999",
            b"12345678.901",
            b"abc",
            b"",
            b" ",
            b"\"a,b\"",
            b"\"say \"\"hi\"\"\"",
            b"\"multi\nline\"",
            b"\"unterminated",
            b"mid\"quote",
            b"\xff\xfe",
            b"\0",
            b"\\",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 1..4),
    ];
    let record = prop::collection::vec(field, 1..6);
    let ending = prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\r"]);
    (prop::collection::vec(record, 0..12), ending)
}

fn render_csv(records: &[Vec<Vec<u8>>], ending: &[u8], delimiter: u8) -> Vec<u8> {
    let mut out = vec![];
    for r in records {
        out.extend(r.join(&delimiter));
        out.extend_from_slice(ending);
    }
    out
}

/// Bytes that look like NDJSON: objects that are whole, cut short, of other types or
/// of other shapes, one a line.
fn ndjson_like() -> impl Strategy<Value = Vec<u8>> {
    let value = prop::sample::select(vec![
        "1",
        "-1",
        "1.5",
        "1e400",
        "true",
        "null",
        "\"x\"",
        "\"2024-01-01\"",
        "\"12.5\"",
        "[]",
        "[1,2]",
        "{}",
        "{\"a\":{\"b\":1}}",
        "18446744073709551616",
        "\"\\ud800\"",
        "\"\\u0000\"",
    ]);
    let object = prop::collection::vec((0usize..6, value), 0..5).prop_map(|kv| {
        let fields: Vec<String> = kv
            .into_iter()
            .map(|(k, v)| format!("\"c{k}\":{v}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    });
    let line = prop_oneof![
        4 => object.clone(),
        1 => (object, any::<Index>()).prop_map(|(o, i)| o[..i.index(o.len() + 1)].to_string()),
        1 => prop::sample::select(vec!["", " ", "[1]", "1", "\"s\"", "null", "{", "}", "\r"])
            .prop_map(str::to_string),
        1 => ".{0,12}",
    ];
    (
        prop::collection::vec(line, 0..12),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, crlf, trailing)| {
            let mut text = lines.join(if crlf { "\r\n" } else { "\n" });
            if trailing {
                text.push('\n');
            }
            text.into_bytes()
        })
}

/// What a scan read: good rows, dead letters, and its error if it failed.
type Read = (usize, Vec<DeadRecord>, Result<(), String>);

/// Reads `data` as file "f" with a scan of `parts` partitions; checks what came out.
fn scan(
    data: Vec<u8>,
    format: RecordFormat,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    parts: usize,
) -> Result<Read, TestCaseError> {
    let size = data.len() as u64;
    let outcome = with_deadline(move || {
        futures::executor::block_on(async move {
            let store = Arc::new(InMemory::new());
            store
                .put(&StorePath::from("f"), PutPayload::from(data))
                .await
                .expect("an in-memory put");
            let runtime = RuntimeEnv::default();
            runtime.register_object_store(
                &url::Url::parse("memory://").expect("a URL"),
                store.clone(),
            );
            let task = Arc::new(TaskContext::default().with_runtime(Arc::new(runtime)));
            let dead = Arc::new(DeadLetters::default());
            let exec = TolerantScanExec::new(
                "t".into(),
                "memory://".into(),
                format,
                schema,
                projection,
                split_ranges(&[("f".to_string(), size)], parts),
                dead.clone(),
            )
            .expect("a valid projection");
            let mut rows = 0;
            let mut result = Ok(());
            for p in 0..exec.properties().partitioning.partition_count() {
                let batches = match exec.execute(p, task.clone()) {
                    Ok(s) => s.try_collect::<Vec<_>>().await,
                    Err(e) => Err(e),
                };
                match batches {
                    Ok(b) => rows += b.iter().map(|b| b.num_rows()).sum::<usize>(),
                    Err(e) => result = Err(e.to_string()),
                }
            }
            (rows, dead.take(), result)
        })
    });
    let (rows, dead, result) = outcome?;
    if let Err(e) = &result {
        prop_assert!(!e.is_empty(), "an error says what went wrong");
    }
    for d in &dead {
        prop_assert!(
            d.offset < size.max(1),
            "a dead letter's offset is in the file"
        );
        prop_assert!(!d.error.is_empty(), "a dead letter says why");
        prop_assert!(
            d.record.len() <= 64 << 10,
            "a dead letter keeps at most 64 KiB"
        );
    }
    Ok((rows, dead, result))
}

/// Runs `f` on its own thread: a panic is the case's panic, and a case that has not
/// finished by `DEADLINE` fails (a stuck decoder) instead of hanging the test run.
fn with_deadline<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TestCaseError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "the scan did not finish within {DEADLINE:?}"
        ))),
    }
}

/// `cases` cases per property, and no regression files: a failure found here becomes
/// a named test in this file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// The harness reads what it is given: good records as rows, bad ones as dead
/// letters (so the properties below are about real decoding, not an early error).
#[test]
fn the_harness_reads_good_records_and_dead_letters() {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("c0", DataType::Int64, true),
        Field::new("c1", DataType::Utf8, true),
    ]));
    let csv = RecordFormat::Csv {
        has_header: true,
        delimiter: b',',
    };
    for parts in 1..4 {
        let data = b"c0,c1\n1,a\nx,b\n3,c\n4\n".to_vec();
        let (rows, dead, result) = scan(data, csv.clone(), schema.clone(), None, parts).unwrap();
        assert_eq!(
            (rows, dead.len(), result),
            (2, 2, Ok(())),
            "{parts} partitions"
        );
        let data = b"{\"c0\":1}\n{\"c0\":\"x\"}\n{\"c0\":3,\"c1\":\"c\"}\n{\n".to_vec();
        let (rows, dead, result) =
            scan(data, RecordFormat::Ndjson, schema.clone(), None, parts).unwrap();
        assert_eq!(
            (rows, dead.len(), result),
            (2, 2, Ok(())),
            "{parts} partitions"
        );
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_never_panic_the_tolerant_csv_scan(
        data in prop::collection::vec(any::<u8>(), 0..384),
        (schema, projection) in schema_and_projection(),
        has_header in any::<bool>(),
        delimiter in delimiter(),
        parts in 1usize..4,
    ) {
        let _read = scan(data, RecordFormat::Csv { has_header, delimiter }, schema, projection, parts)?;
    }

    #[test]
    fn csv_like_bytes_become_batches_and_dead_letters(
        (records, ending) in csv_like(),
        (schema, projection) in schema_and_projection(),
        has_header in any::<bool>(),
        delimiter in delimiter(),
        parts in 1usize..4,
    ) {
        let data = render_csv(&records, ending, delimiter);
        let _read = scan(data, RecordFormat::Csv { has_header, delimiter }, schema, projection, parts)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_tolerant_ndjson_scan(
        data in prop::collection::vec(any::<u8>(), 0..384),
        (schema, projection) in schema_and_projection(),
        parts in 1usize..4,
    ) {
        let _read = scan(data, RecordFormat::Ndjson, schema, projection, parts)?;
    }

    #[test]
    fn ndjson_like_bytes_become_batches_and_dead_letters(
        data in ndjson_like(),
        (schema, projection) in schema_and_projection(),
        parts in 1usize..4,
    ) {
        let _read = scan(data, RecordFormat::Ndjson, schema, projection, parts)?;
    }
}

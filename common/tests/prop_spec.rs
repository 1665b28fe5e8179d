//! Bad input never panics the pipeline spec parser (issue 11, §7): arbitrary bytes,
//! and the example specs (TOML, and the same specs as JSON) with bytes flipped,
//! inserted or deleted, lines dropped, duplicated or swapped and values replaced by
//! values of other types, are either a spec or an `Error::Spec` that names the origin
//! and a key. What parses is normalized against an empty directory (a cheap file
//! system check) and its derived settings are read.

use autopipe_common::error::Error;
use autopipe_common::spec::{parse_schema, resolve_url, PipelineSpec};
use proptest::prelude::*;
use proptest::sample::Index;
use std::path::Path;
use std::sync::LazyLock;

const ORIGIN: &str = "prop.toml";

/// A seed that sets every optional key the examples leave out.
const RICH: &str = r#"
[job]
name = "rich-job_1"
mode = "batch"
[job.params]
target_partition_bytes = "32MiB"
shuffle_partitions = 8
max_task_attempts = 3
broadcast_join_max_bytes = 1048576
speculation = true
speculation_multiplier = 2.5
speculation_quantile = 0.75
speculation_min_runtime_ms = 500
task_timeout_ms = 0
adaptive_retries = false
max_bad_record_ratio = 0.01

[[sources]]
name = "orders"
format = "csv"
path = "data/orders/*.csv"
has_header = false
delimiter = ";"
schema = "id BIGINT, amount DECIMAL(10, 2), at TIMESTAMP, ok BOOLEAN"

[[sources]]
name = "events"
format = "ndjson"
path = "s3://bucket/events/"
schema = "id INT, name VARCHAR"

[transform]
sql = "SELECT * FROM orders JOIN events ON orders.id = events.id"

[sink]
format = "csv"
path = "out/rich"
mode = "error_if_exists"
dead_letter_path = "out/dead"
"#;

/// The example specs shipped in `examples/*.toml`, plus `RICH`; each must parse.
static SEEDS: LazyLock<Vec<String>> = LazyLock::new(read_seeds);
/// The seeds as JSON (the form a normalized spec travels in).
static JSON_SEEDS: LazyLock<Vec<String>> = LazyLock::new(json_seeds);

fn read_seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/ is part of the repository")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| std::fs::read_to_string(p).expect("an example spec is UTF-8"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no example specs in {}", dir.display());
    out.push(RICH.to_string());
    for s in &out {
        PipelineSpec::parse(s, ORIGIN).expect("a seed spec parses");
    }
    out
}

fn json_seeds() -> Vec<String> {
    SEEDS
        .iter()
        .map(|s| {
            let spec = PipelineSpec::parse(s, ORIGIN).expect("a seed spec parses");
            serde_json::to_string_pretty(&spec).expect("a spec serializes")
        })
        .collect()
}

/// Parses `text`; an error must be a spec error naming the origin and a key, and a
/// spec must survive what the CLI does next with it.
fn check(text: &str) -> Result<(), TestCaseError> {
    match PipelineSpec::parse(text, ORIGIN) {
        Ok(spec) => use_spec(spec),
        Err(Error::Spec {
            origin,
            key,
            message,
        }) => {
            prop_assert_eq!(origin, ORIGIN);
            prop_assert!(!key.is_empty(), "an error names a key (or '-')");
            prop_assert!(!message.trim().is_empty(), "an error says what is wrong");
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "a bad spec is a spec error, not {other:?}"
        ))),
    }
}

fn use_spec(spec: PipelineSpec) -> Result<(), TestCaseError> {
    let p = &spec.job.params;
    let _ = (
        p.target_partition_bytes(),
        p.broadcast_join_max_bytes(),
        p.max_bad_record_ratio(),
        p.max_task_attempts(),
        p.speculation(),
    );
    let _ = spec.sink.dead_letter_dir("job-1");
    for s in &spec.sources {
        if let Some(schema) = &s.schema {
            prop_assert!(schema.to_schema().is_ok(), "validate checked the schema");
        }
    }
    // normalize checks that local inputs exist: only where that is a cheap look into
    // an empty directory (no globs, absolute paths or '..' that could walk the disk)
    let cheap = |p: &str| {
        !p.contains(['*', '?', '[', '\0'])
            && !p.starts_with('/')
            && !p.contains("..")
            && !p.contains("://")
    };
    if spec.sources.iter().all(|s| cheap(&s.path)) {
        let dir = tempfile::tempdir().expect("a temp dir");
        match spec.normalize(dir.path(), ORIGIN) {
            Ok(_) => {}
            Err(Error::Spec { origin, .. }) => prop_assert_eq!(origin, ORIGIN),
            Err(other) => {
                return Err(TestCaseError::fail(format!(
                    "normalize fails with a spec error, not {other:?}"
                )))
            }
        }
    }
    Ok(())
}

/// Found by the properties below: serde quotes an empty name as ``, which the JSON
/// error's key hint took for the key.
#[test]
fn a_json_spec_with_an_empty_enum_value_or_key_names_a_key() {
    // and an empty key, whose path prints as "" (found once the JSON errors named
    // their path)
    for text in [r#"{"job": {"name": "x", "mode": ""}}"#, "{\"`\"", "{\"\""] {
        match PipelineSpec::parse(text, ORIGIN) {
            Err(Error::Spec { key, .. }) => assert!(!key.is_empty(), "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

/// One edit of a spec's text.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    DropLine(Index),
    DupLine(Index),
    SwapLines(Index, Index),
    /// the value after the `=` (TOML) or `:` (JSON) of a line
    ReplaceValue(Index, String),
}

/// Values of every TOML/JSON type, and strings that are almost right.
fn other_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "18446744073709551616",
            "-9223372036854775809",
            "1.5",
            "-0.0",
            "1e308",
            "nan",
            "inf",
            "-inf",
            "true",
            "null",
            "\"\"",
            "\" \"",
            "\"x\"",
            "[]",
            "[1, \"a\", true]",
            "[[1], [2]]",
            "{}",
            "{ a = 1 }",
            "{\"a\": 1}",
            "1979-05-27T07:32:00Z",
            "07:32:00",
            "'lit'",
            "\"\"\"multi\nline\"\"\"",
            "\"\\u0000\"",
            "\"ÿ€𝄞\"",
            "\"64 parsecs\"",
            "\"99999999999999999999TiB\"",
            "\"1.5e3MiB\"",
            "\".\"",
            "\"streaming\"",
            "\"Batch\"",
            "\"xml\"",
            "\"DECIMAL(\"",
            "\"a DECIMAL(39, 2)\"",
            "\"a DECIMAL(5, 9)\"",
            "\"a INT, a INT\"",
            "\"a ))),((( INT\"",
            "\"ftp://host/x\"",
            "\"::\"",
            "\",,\"",
            "\"\\n\"",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<String>().prop_map(|s| format!("{s:?}")),
        ".{0,8}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => any::<Index>().prop_map(Edit::Delete),
        1 => any::<Index>().prop_map(Edit::DropLine),
        1 => any::<Index>().prop_map(Edit::DupLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        3 => (any::<Index>(), other_value()).prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
    ]
}

fn apply(text: &[u8], edit: &Edit) -> Vec<u8> {
    let mut b = text.to_vec();
    let lines = || -> Vec<Vec<u8>> { text.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect() };
    match edit {
        Edit::Flip(i, x) if !b.is_empty() => {
            let i = i.index(b.len());
            b[i] ^= x | 1;
        }
        Edit::Insert(i, x) => b.insert(i.index(b.len() + 1), *x),
        Edit::Delete(i) if !b.is_empty() => {
            b.remove(i.index(b.len()));
        }
        Edit::DropLine(i) => {
            let mut l = lines();
            l.remove(i.index(l.len()));
            b = l.join(&b'\n');
        }
        Edit::DupLine(i) => {
            let mut l = lines();
            let i = i.index(l.len());
            l.insert(i, l[i].clone());
            b = l.join(&b'\n');
        }
        Edit::SwapLines(x, y) => {
            let mut l = lines();
            let n = l.len();
            l.swap(x.index(n), y.index(n));
            b = l.join(&b'\n');
        }
        Edit::ReplaceValue(i, v) => {
            let mut l = lines();
            let with_value: Vec<usize> = (0..l.len())
                .filter(|&k| l[k].contains(&b'=') || l[k].contains(&b':'))
                .collect();
            if !with_value.is_empty() {
                let k = with_value[i.index(with_value.len())];
                let at = l[k]
                    .iter()
                    .position(|&c| c == b'=' || c == b':')
                    .expect("filtered above");
                l[k].truncate(at + 1);
                l[k].push(b' ');
                l[k].extend_from_slice(v.as_bytes());
                // JSON lines keep their separator so the document stays close to valid
                if text.first() == Some(&b'{') {
                    l[k].push(b',');
                }
            }
            b = l.join(&b'\n');
        }
        _ => {}
    }
    b
}

fn parse_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => check(text),
        // a spec file must be UTF-8 (from_file says so); the rest of it still parses
        Err(_) => check(&String::from_utf8_lossy(bytes)),
    }
}

/// A TOML or JSON value of any type.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        ".{0,10}".prop_map(toml::Value::String),
        prop::sample::select(vec!["batch", "csv", "parquet", "ndjson", "64MiB", "a INT"])
            .prop_map(|s| toml::Value::String(s.into())),
        Just(toml::Value::Datetime(
            "1979-05-27T07:32:00Z".parse().expect("a TOML datetime")
        )),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(toml::Value::Array),
            prop::collection::vec((key(), inner), 0..3)
                .prop_map(|kv| toml::Value::Table(kv.into_iter().collect())),
        ]
    })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
        prop::sample::select(vec!["batch", "csv", "parquet", "ndjson", "64MiB", "a INT"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Keys the spec knows, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "name",
            "mode",
            "params",
            "format",
            "path",
            "schema",
            "sql",
            "delimiter",
            "has_header",
            "job",
            "sources",
            "sink",
            "transform",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,8}",
    ]
}

/// Replaces the `n`th node (pre-order, the root excluded) of a TOML value.
fn replace_toml(v: &mut toml::Value, n: &mut usize, new: &toml::Value) -> bool {
    let children: Vec<&mut toml::Value> = match v {
        toml::Value::Table(t) => t.iter_mut().map(|(_, v)| v).collect(),
        toml::Value::Array(a) => a.iter_mut().collect(),
        _ => vec![],
    };
    for c in children {
        if *n == 0 {
            *c = new.clone();
            return true;
        }
        *n -= 1;
        if replace_toml(c, n, new) {
            return true;
        }
    }
    false
}

fn replace_json(v: &mut serde_json::Value, n: &mut usize, new: &serde_json::Value) -> bool {
    let children: Vec<&mut serde_json::Value> = match v {
        serde_json::Value::Object(o) => o.values_mut().collect(),
        serde_json::Value::Array(a) => a.iter_mut().collect(),
        _ => vec![],
    };
    for c in children {
        if *n == 0 {
            *c = new.clone();
            return true;
        }
        *n -= 1;
        if replace_json(c, n, new) {
            return true;
        }
    }
    false
}

/// `cases` cases per property, and no regression files: a failure found here becomes
/// a named test in this file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_spec_parser(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        parse_bytes(&bytes)?;
    }

    #[test]
    fn arbitrary_text_and_json_like_text_never_panic_the_spec_parser(
        text in prop_oneof![".{0,200}", "\\{.{0,200}", "(\\[[a-z.\\[\\]]{0,12}\\]\n|[a-z_]{1,8} = .{0,16}\n){0,12}"],
    ) {
        check(&text)?;
    }

    #[test]
    fn edited_toml_specs_are_parsed_or_rejected_with_a_key(
        seed in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let seeds = &*SEEDS;
        let mut text = seeds[seed.index(seeds.len())].clone().into_bytes();
        for e in &edits {
            text = apply(&text, e);
        }
        parse_bytes(&text)?;
    }

    #[test]
    fn edited_json_specs_are_parsed_or_rejected_with_a_key(
        seed in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let seeds = &*JSON_SEEDS;
        let mut text = seeds[seed.index(seeds.len())].clone().into_bytes();
        for e in &edits {
            text = apply(&text, e);
        }
        parse_bytes(&text)?;
    }

    #[test]
    fn toml_specs_with_a_value_of_another_type_are_rejected_with_its_key(
        seed in any::<Index>(),
        at in 0usize..64,
        new in toml_value(),
    ) {
        let seeds = &*SEEDS;
        let mut v: toml::Value = toml::from_str(&seeds[seed.index(seeds.len())])
            .expect("a seed is TOML");
        let mut n = at;
        replace_toml(&mut v, &mut n, &new);
        // some trees have no TOML text (e.g. a table after a value in an array)
        if let Ok(text) = toml::to_string(&v) {
            check(&text)?;
        }
    }

    #[test]
    fn json_specs_with_a_value_of_another_type_are_rejected_with_its_key(
        seed in any::<Index>(),
        at in 0usize..64,
        new in json_value(),
    ) {
        let seeds = &*JSON_SEEDS;
        let mut v: serde_json::Value = serde_json::from_str(&seeds[seed.index(seeds.len())])
            .expect("a seed is JSON");
        let mut n = at;
        replace_json(&mut v, &mut n, &new);
        check(&serde_json::to_string(&v).expect("a JSON value serializes"))?;
    }

    #[test]
    fn arbitrary_schema_strings_are_a_schema_or_a_message(
        text in prop_oneof![
            ".{0,64}",
            "([a-z]{1,3} (BIGINT|int|DECIMAL\\([0-9 ,-]{0,6}\\)|DECIMAL\\(|TEXT|[A-Z]{0,4})[,()]{0,2} ?){0,5}",
        ],
    ) {
        match parse_schema(&text) {
            Ok(s) => prop_assert!(!s.fields().is_empty()),
            Err(m) => prop_assert!(!m.is_empty()),
        }
    }

    #[test]
    fn arbitrary_paths_resolve_to_a_url_or_a_message(path in ".{0,64}") {
        match resolve_url(&path, Path::new("/base")) {
            Ok(url) => prop_assert!(url.contains("://")),
            Err(m) => prop_assert!(!m.is_empty()),
        }
    }
}

//! Bad shuffle data never panics a reader (issue 11, §7). A map output file (Arrow IPC
//! file format) that is truncated, corrupted or arbitrary is read with
//! `read_partition_file`, and a Flight stream (as a remote reducer decodes it) whose
//! messages are corrupted, dropped, repeated, reordered or arbitrary is decoded with
//! `decode_shuffle_stream`: each read ends in batches or an error. A panic on the
//! blocking thread that feeds `read_partition_file`'s stream would not reach the
//! reader at all (its stream would just end early, losing rows silently), so a read
//! that ends without an error must have as many batches as the file's footer lists
//! (a panic hook names what panicked there). Arrow's readers panic on some corrupted
//! files and streams (and abort on a corrupt footer block, apache/arrow-rs#10921):
//! `read_partition_file` checks the footer and catches the reader's panics, and
//! `decode_shuffle_stream` turns a decoder panic into an error; each failure found is
//! kept as a named minimal case.

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use autopipe_common::shuffle::{decode_shuffle_stream, read_partition_file};
use bytes::Bytes;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, ListArray, StringArray,
};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use proptest::prelude::*;
use proptest::sample::Index;
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex, Once};

/// A map output batch with the column kinds a shuffle carries, nulls included.
fn batch() -> RecordBatch {
    let dict: DictionaryArray<Int32Type> = vec![Some("x"), Some("y"), Some("x"), None]
        .into_iter()
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "i",
            Arc::new(Int64Array::from(vec![
                Some(1),
                None,
                Some(-3),
                Some(i64::MAX),
            ])),
        ),
        (
            "s",
            Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some("ccc"),
                Some(""),
            ])),
        ),
        (
            "f",
            Arc::new(Float64Array::from(vec![
                Some(0.5),
                Some(f64::NAN),
                None,
                Some(-1.0),
            ])),
        ),
        (
            "b",
            Arc::new(BooleanArray::from(vec![
                Some(true),
                None,
                Some(false),
                Some(true),
            ])),
        ),
        ("d", Arc::new(dict)),
        (
            "l",
            Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
                Some(vec![Some(1)]),
                None,
                Some(vec![]),
                Some(vec![None, Some(2)]),
            ])),
        ),
    ];
    RecordBatch::try_from_iter(columns).expect("a valid batch")
}

/// A valid map output file: two batches, written as the worker writes them.
static IPC_FILE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let b = batch();
    let mut w = FileWriter::try_new(Vec::new(), &b.schema()).expect("an IPC writer");
    w.write(&b).expect("write a batch");
    w.write(&b.slice(1, 2)).expect("write a batch");
    w.finish().expect("finish the file");
    w.into_inner().expect("the file's bytes")
});

/// Valid Flight streams of two batches: dictionaries hydrated (as the worker sends
/// them) and sent as dictionary messages.
static FLIGHT_STREAMS: LazyLock<Vec<Vec<FlightData>>> = LazyLock::new(|| {
    [DictionaryHandling::Hydrate, DictionaryHandling::Resend]
        .into_iter()
        .map(|dictionaries| {
            let b = batch();
            let batches = futures::stream::iter([Ok(b.clone()), Ok(b.slice(2, 2))]);
            futures::executor::block_on(
                FlightDataEncoderBuilder::new()
                    .with_dictionary_handling(dictionaries)
                    .build(batches)
                    .try_collect::<Vec<_>>(),
            )
            .expect("a valid batch encodes")
        })
        .collect()
});

/// Where `read_partition_file` runs its blocking reader; panics on these threads
/// (caught or not) are recorded in `BLOCKING_PANICS`, to say what went wrong.
const READER_THREADS: &str = "prop-shuffle-reader";
static BLOCKING_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// One file read at a time, so a recorded panic belongs to the case that reads.
static ONE_READ: Mutex<()> = Mutex::new(());

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(READER_THREADS) {
                BLOCKING_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.to_string());
            }
            default(info);
        }));
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(READER_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

/// A byte-level edit of a file or a message.
#[derive(Debug, Clone)]
enum Corrupt {
    Flip(Index, u8),
    /// a little-endian u32 over 4 bytes (lengths, offsets, counts)
    Word(Index, u32),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
}

fn corrupt() -> impl Strategy<Value = Corrupt> {
    let word = prop_oneof![
        prop::sample::select(vec![
            0u32,
            1,
            7,
            8,
            0x7f,
            0xff,
            0x1_0000,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fff8,
            0xffff_ffff,
        ]),
        any::<u32>(),
    ];
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Corrupt::Flip(i, x)),
        3 => (any::<Index>(), word).prop_map(|(i, w)| Corrupt::Word(i, w)),
        1 => any::<Index>().prop_map(Corrupt::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(i, b)| Corrupt::Insert(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Corrupt::Delete(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, c: &Corrupt) {
    if bytes.is_empty() {
        if let Corrupt::Insert(_, b) = c {
            bytes.extend_from_slice(b);
        }
        return;
    }
    match c {
        Corrupt::Flip(i, x) => {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        Corrupt::Word(i, w) => {
            let i = i.index(bytes.len());
            for (k, b) in w.to_le_bytes().into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(i + k) {
                    *slot = b;
                }
            }
        }
        Corrupt::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Corrupt::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        Corrupt::Delete(i, n) => {
            let i = i.index(bytes.len());
            bytes.drain(i..(i + n).min(bytes.len()));
        }
    }
}

/// What reading a map output file gave: the open error, or the stream's items (as
/// strings for errors); the batches its footer lists; and the panics on the reader's
/// blocking thread.
struct FileRead {
    opened: Result<Vec<Result<RecordBatch, String>>, String>,
    listed: Option<usize>,
    blocking_panics: Vec<String>,
}

impl FileRead {
    /// Fails when the stream ended without an error but short of the listed batches.
    fn check_not_short(&self) -> Result<(), String> {
        let Ok(items) = &self.opened else {
            return Ok(());
        };
        match self.listed {
            Some(n) if items.len() < n && items.iter().all(Result::is_ok) => Err(format!(
                "the stream ended after {} of the {n} batches the footer lists, with no \
                 error (panics on the reader's blocking thread: {:?})",
                items.len(),
                self.blocking_panics
            )),
            _ => Ok(()),
        }
    }
}

/// The record batches a map output file's footer lists, when it has a footer.
fn listed_batches(bytes: &[u8]) -> Option<usize> {
    let trailer = bytes.len().checked_sub(10)?;
    let footer_len = usize::try_from(i32::from_le_bytes(
        bytes[trailer..trailer + 4].try_into().ok()?,
    ))
    .ok()?;
    let footer = bytes.get(trailer.checked_sub(footer_len)?..trailer)?;
    let footer = datafusion::arrow::ipc::root_as_footer(footer).ok()?;
    Some(footer.recordBatches().map_or(0, |b| b.len()))
}

/// Reads `bytes` as a map output file with `read_partition_file`, to the stream's end.
fn read_bytes(bytes: &[u8]) -> FileRead {
    let mut f = tempfile::NamedTempFile::new().expect("a temp file");
    f.write_all(bytes).expect("write the temp file");
    f.flush().expect("flush the temp file");
    let path = f.path().to_path_buf();
    let _one = ONE_READ.lock().unwrap_or_else(|e| e.into_inner());
    // a panic on this thread (opening the file) reaches the test as a panic
    let opened = RUNTIME.block_on(async move {
        let (_schema, batches) = read_partition_file(&path).map_err(|e| e.to_string())?;
        Ok(batches.map_err(|e| e.to_string()).collect().await)
    });
    let blocking_panics =
        std::mem::take(&mut *BLOCKING_PANICS.lock().unwrap_or_else(|e| e.into_inner()));
    FileRead {
        opened,
        listed: listed_batches(bytes),
        blocking_panics,
    }
}

/// Reads `bytes` as a map output file: an error or batches, and no panic anywhere.
fn read_file(bytes: &[u8]) -> Result<(), TestCaseError> {
    let read = read_bytes(bytes);
    read.check_not_short().map_err(TestCaseError::fail)?;
    let errors = match &read.opened {
        Err(e) => vec![e],
        Ok(items) => items.iter().filter_map(|i| i.as_ref().err()).collect(),
    };
    for e in errors {
        prop_assert!(!e.is_empty(), "an error says what went wrong");
    }
    Ok(())
}

/// Decodes a Flight stream as a reducer does (`decode_shuffle_stream`): an error or
/// batches, and no panic.
fn decode_flight(messages: Vec<FlightData>) -> Result<(), TestCaseError> {
    let stream = futures::stream::iter(messages.into_iter().map(Ok::<_, FlightError>));
    let items: Vec<Result<RecordBatch, FlightError>> =
        futures::executor::block_on(decode_shuffle_stream(stream).collect());
    for item in items {
        if let Err(e) = item {
            prop_assert!(!e.to_string().is_empty(), "an error says what went wrong");
        }
    }
    Ok(())
}

/// An edit of a Flight stream: of one message's header or body, or of the sequence.
#[derive(Debug, Clone)]
enum FlightEdit {
    Header(Index, Corrupt),
    Body(Index, Corrupt),
    BodyReplaced(Index, Vec<u8>),
    Drop(Index),
    Repeat(Index),
    Swap(Index, Index),
    Cut(Index),
}

/// Edits of the message sequence only: every message stays intact.
fn sequence_edit() -> impl Strategy<Value = FlightEdit> {
    prop_oneof![
        any::<Index>().prop_map(FlightEdit::Drop),
        any::<Index>().prop_map(FlightEdit::Repeat),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| FlightEdit::Swap(a, b)),
        any::<Index>().prop_map(FlightEdit::Cut),
    ]
}

/// Edits of a message body that keep its length: values change, buffers still fit.
fn same_length_body_edit() -> impl Strategy<Value = FlightEdit> {
    (any::<Index>(), corrupt()).prop_filter_map("keeps the body's length", |(m, c)| match c {
        Corrupt::Flip(..) | Corrupt::Word(..) => Some(FlightEdit::Body(m, c)),
        _ => None,
    })
}

fn flight_edit() -> impl Strategy<Value = FlightEdit> {
    prop_oneof![
        4 => (any::<Index>(), corrupt()).prop_map(|(m, c)| FlightEdit::Header(m, c)),
        4 => (any::<Index>(), corrupt()).prop_map(|(m, c)| FlightEdit::Body(m, c)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(m, b)| FlightEdit::BodyReplaced(m, b)),
        1 => any::<Index>().prop_map(FlightEdit::Drop),
        1 => any::<Index>().prop_map(FlightEdit::Repeat),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| FlightEdit::Swap(a, b)),
        1 => any::<Index>().prop_map(FlightEdit::Cut),
    ]
}

fn edit_bytes(b: &Bytes, c: &Corrupt) -> Bytes {
    let mut v = b.to_vec();
    apply(&mut v, c);
    Bytes::from(v)
}

fn apply_flight(msgs: &mut Vec<FlightData>, e: &FlightEdit) {
    if msgs.is_empty() {
        return;
    }
    let n = msgs.len();
    match e {
        FlightEdit::Header(m, c) => {
            let m = &mut msgs[m.index(n)];
            m.data_header = edit_bytes(&m.data_header, c);
        }
        FlightEdit::Body(m, c) => {
            let m = &mut msgs[m.index(n)];
            m.data_body = edit_bytes(&m.data_body, c);
        }
        FlightEdit::BodyReplaced(m, b) => msgs[m.index(n)].data_body = Bytes::from(b.clone()),
        FlightEdit::Drop(m) => {
            msgs.remove(m.index(n));
        }
        FlightEdit::Repeat(m) => {
            let i = m.index(n);
            msgs.insert(i, msgs[i].clone());
        }
        FlightEdit::Swap(a, b) => msgs.swap(a.index(n), b.index(n)),
        FlightEdit::Cut(i) => msgs.truncate(i.index(n + 1)),
    }
}

/// Arbitrary message bytes, and arbitrary bytes after the IPC continuation marker.
fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..96),
        prop::collection::vec(any::<u8>(), 0..96).prop_map(|mut b| {
            b.splice(0..0, [0xff, 0xff, 0xff, 0xff]);
            b
        }),
    ]
}

/// `cases` cases per property, and no regression files: a failure found here becomes
/// a named test in this file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// The stream of `FLIGHT_STREAMS[seed]` after `edits`.
fn edited_stream(seed: &Index, edits: &[FlightEdit]) -> Vec<FlightData> {
    let mut msgs = FLIGHT_STREAMS[seed.index(FLIGHT_STREAMS.len())].clone();
    for e in edits {
        apply_flight(&mut msgs, e);
    }
    msgs
}

/// `IPC_FILE` with the row count of the first batch's first column (4, one null)
/// raised to 12: more rows than its buffers hold.
fn file_with_a_row_count_beyond_its_buffers() -> Vec<u8> {
    let mut bytes = IPC_FILE.clone();
    // the column's FieldNode: length 4, null count 1, as two little-endian i64
    let node: Vec<u8> = [4i64.to_le_bytes(), 1i64.to_le_bytes()].concat();
    let at = bytes
        .windows(node.len())
        .position(|w| w == node.as_slice())
        .expect("the first batch's FieldNode of column i");
    bytes[at] = 12;
    bytes
}

/// `IPC_FILE` whose footer says its first batch's body is 1 PiB long.
fn file_with_a_huge_block_in_its_footer() -> Vec<u8> {
    let mut bytes = IPC_FILE.clone();
    let len = bytes.len();
    let footer_len =
        i32::from_le_bytes(bytes[len - 10..len - 6].try_into().expect("4 bytes")) as usize;
    let footer_at = len - 10 - footer_len;
    let footer = datafusion::arrow::ipc::root_as_footer(&bytes[footer_at..len - 10])
        .expect("a valid footer");
    let block = footer
        .recordBatches()
        .and_then(|b| b.iter().next().copied())
        .expect("a record batch block");
    let body = block.bodyLength().to_le_bytes();
    // the Block struct: offset (i64), metadata length (i32, padded to 8), body length (i64)
    let mut pattern = block.offset().to_le_bytes().to_vec();
    pattern.extend_from_slice(&block.metaDataLength().to_le_bytes());
    let at = bytes[footer_at..]
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .map(|i| footer_at + i + 16)
        .expect("the block in the footer");
    assert_eq!(bytes[at..at + 8], body, "the block's body length follows");
    bytes[at..at + 8].copy_from_slice(&(1i64 << 50).to_le_bytes());
    bytes
}

/// Whether a map output file is rejected: an error on open or as a stream item, and
/// no panic on the reader's blocking thread.
fn assert_rejected(bytes: &[u8]) {
    let read = read_bytes(bytes);
    if let Err(short) = read.check_not_short() {
        panic!("{short}");
    }
    match read.opened {
        Err(e) => assert!(!e.is_empty()),
        Ok(items) => assert!(
            items.iter().any(Result::is_err),
            "a corrupt file must end in an error, not in {} batches",
            items.len()
        ),
    }
}

/// The harness reads what it is given: the valid file and streams come back whole
/// (so the properties below are about real decoding).
#[test]
fn the_harness_reads_the_valid_file_and_streams_whole() {
    let read = read_bytes(&IPC_FILE);
    assert!(read.blocking_panics.is_empty());
    assert_eq!(read.listed, Some(2));
    let rows: Vec<usize> = read
        .opened
        .expect("the file opens")
        .into_iter()
        .map(|b| b.expect("a batch").num_rows())
        .collect();
    assert_eq!(rows, vec![4, 2]);
    for msgs in FLIGHT_STREAMS.iter() {
        let items: Vec<_> = futures::executor::block_on(
            FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(
                msgs.clone().into_iter().map(Ok::<_, FlightError>),
            ))
            .collect(),
        );
        let rows: Vec<usize> = items
            .into_iter()
            .map(|b| b.expect("a batch").num_rows())
            .collect();
        assert_eq!(rows, vec![4, 2]);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn truncated_map_output_files_are_rejected_without_a_panic(at in any::<Index>()) {
        let bytes = &IPC_FILE[..at.index(IPC_FILE.len())];
        read_file(bytes)?;
        prop_assert!(read_bytes(bytes).opened.is_err(), "a file without its footer does not open");
    }

    #[test]
    fn arbitrary_bytes_as_a_map_output_file_are_rejected_without_a_panic(
        body in prop::collection::vec(any::<u8>(), 0..256),
        framed in any::<bool>(),
    ) {
        // framed: between the file's magic numbers, so the footer is looked at
        let bytes = if framed {
            let mut b = b"ARROW1\0\0".to_vec();
            b.extend_from_slice(&body);
            b.extend_from_slice(b"ARROW1");
            b
        } else {
            body
        };
        read_file(&bytes)?;
    }

    #[test]
    fn corrupted_map_output_files_are_read_or_rejected_without_a_panic(
        edits in prop::collection::vec(corrupt(), 1..4),
    ) {
        let mut bytes = IPC_FILE.clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        read_file(&bytes)?;
    }
}

#[test]
fn a_map_output_file_whose_row_count_outgrows_its_buffers_is_an_error_not_a_short_stream() {
    assert_rejected(&file_with_a_row_count_beyond_its_buffers());
}

/// Set in the child process of the test below, which reads the file there.
const CHILD: &str = "AUTOPIPE_PROP_SHUFFLE_HUGE_BLOCK_CHILD";

#[test]
fn a_map_output_file_whose_footer_claims_a_huge_block_is_an_error_not_an_abort() {
    if std::env::var_os(CHILD).is_some() {
        assert_rejected(&file_with_a_huge_block_in_its_footer());
        return;
    }
    // an abort ends the whole process: read the file in a child test process
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "a_map_output_file_whose_footer_claims_a_huge_block_is_an_error_not_an_abort",
            "--include-ignored",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child test");
    assert!(
        out.status.success(),
        "reading the file ended the child with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.contains("memory allocation") || l.contains("panicked"))
            .unwrap_or("")
    );
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn reordered_dropped_or_repeated_flight_messages_are_decoded_or_rejected(
        seed in any::<Index>(),
        edits in prop::collection::vec(sequence_edit(), 1..4),
    ) {
        decode_flight(edited_stream(&seed, &edits))?;
    }

    #[test]
    fn flipped_bytes_in_flight_message_bodies_are_decoded_or_rejected(
        seed in any::<Index>(),
        edits in prop::collection::vec(same_length_body_edit(), 1..4),
    ) {
        decode_flight(edited_stream(&seed, &edits))?;
    }

    #[test]
    fn arbitrary_flight_data_is_rejected_without_a_panic(
        messages in prop::collection::vec((message_bytes(), message_bytes()), 0..4),
        schema_first in any::<bool>(),
    ) {
        // schema_first: after a valid schema message, so batch headers are looked at
        let mut msgs = if schema_first {
            FLIGHT_STREAMS[0][..1].to_vec()
        } else {
            vec![]
        };
        msgs.extend(messages.into_iter().map(|(header, body)| FlightData {
            data_header: Bytes::from(header),
            data_body: Bytes::from(body),
            ..Default::default()
        }));
        decode_flight(msgs)?;
    }

    #[test]
    fn corrupted_flight_streams_are_decoded_or_rejected_without_a_panic(
        seed in any::<Index>(),
        edits in prop::collection::vec(flight_edit(), 1..4),
    ) {
        decode_flight(edited_stream(&seed, &edits))?;
    }
}

#[test]
fn a_flight_batch_with_an_empty_body_is_an_error_not_a_panic() {
    let mut msgs = FLIGHT_STREAMS[0].clone();
    assert_eq!(msgs.len(), 3, "a schema and two batches");
    msgs[1].data_body = Bytes::new();
    let items: Vec<_> = futures::executor::block_on(
        decode_shuffle_stream(futures::stream::iter(
            msgs.into_iter().map(Ok::<_, FlightError>),
        ))
        .collect(),
    );
    assert!(
        items.iter().any(Result::is_err),
        "the bad batch is an error"
    );
}

/// A single flipped bit can turn a record batch's message header into "none", which
/// arrow's file reader takes for the end of the file: found by the property test
/// above, these two flips once made a stream end short with no error.
#[test]
fn a_batch_whose_header_reads_as_none_is_an_error_not_the_end_of_the_file() {
    let mut bad = vec![];
    for i in 0..IPC_FILE.len() {
        let mut bytes = IPC_FILE.clone();
        bytes[i] ^= 16;
        if let Err(e) = read_bytes(&bytes).check_not_short() {
            bad.push((i, e));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

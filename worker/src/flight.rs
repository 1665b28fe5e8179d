//! Arrow Flight server for shuffle data: `DoGet` with a `ShuffleTicket` streams one
//! output partition of one map task attempt from this worker's shuffle directory.
//! Every other Flight call is unimplemented.

use crate::shuffle_store::ShuffleStore;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use autopipe_common::shuffle::read_partition_file;
use autopipe_proto as pb;
use datafusion::arrow::error::ArrowError;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// Serves shuffle partitions.
#[derive(Clone)]
pub struct ShuffleFlightService {
    /// where map outputs live
    pub store: Arc<ShuffleStore>,
}

type Bs<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for ShuffleFlightService {
    type HandshakeStream = Bs<HandshakeResponse>;
    type ListFlightsStream = Bs<FlightInfo>;
    type DoGetStream = Bs<FlightData>;
    type DoPutStream = Bs<PutResult>;
    type DoExchangeStream = Bs<FlightData>;
    type DoActionStream = Bs<arrow_flight::Result>;
    type ListActionsStream = Bs<ActionType>;

    async fn do_get(&self, req: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let t = pb::ShuffleTicket::decode(req.into_inner().ticket)
            .map_err(|e| Status::invalid_argument(format!("bad shuffle ticket: {e}")))?;
        let path =
            self.store
                .partition_file(&t.job_id, t.stage_id, t.map_task, t.attempt, t.partition);
        let (schema, batches) = read_partition_file(&path).map_err(|e| match e {
            ArrowError::IoError(..) => Status::not_found(format!(
                "shuffle output job {} stage {} map task {} attempt {} partition {} is not on this worker: {e}",
                t.job_id, t.stage_id, t.map_task, t.attempt, t.partition
            )),
            e => Status::internal(format!("cannot read {}: {e}", path.display())),
        })?;
        self.store.metrics.bytes_served(&path);
        let batches = batches.map_err(FlightError::from);
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(stream.boxed()))
    }

    async fn handshake(
        &self,
        _r: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake"))
    }
    async fn list_flights(
        &self,
        _r: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }
    async fn get_flight_info(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }
    async fn poll_flight_info(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }
    async fn get_schema(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }
    async fn do_put(
        &self,
        _r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put"))
    }
    async fn do_exchange(
        &self,
        _r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
    async fn do_action(
        &self,
        _r: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("do_action"))
    }
    async fn list_actions(
        &self,
        _r: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shuffle_store::PartitionWriters;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use autopipe_common::shuffle::{fetch_partition_with, FetchLimits};
    use autopipe_common::util::no_delay;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `store` on an ephemeral port of 127.0.0.1; its address.
    async fn serve(store: Arc<ShuffleStore>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let svc = ShuffleFlightService { store };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(arrow_flight::flight_service_server::FlightServiceServer::new(svc))
                .serve_with_incoming(no_delay(listener)),
        );
        addr
    }

    /// A store in `dir` holding map task 0 of job "j" stage 0: one partition of
    /// `batches` batches of 8192 int64 (64 KiB each).
    fn store_with(dir: &std::path::Path, batches: usize) -> Arc<ShuffleStore> {
        let store = Arc::new(ShuffleStore {
            root: dir.to_path_buf(),
            metrics: Default::default(),
        });
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let mut w = PartitionWriters::create(store.task_dir("j", 0, 0, 1), 1, &schema).unwrap();
        for _ in 0..batches {
            let col = Int64Array::from_iter_values(0..8192);
            let b = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(col)]).unwrap();
            w.write(0, &b).unwrap();
        }
        w.finish().unwrap();
        store
    }

    /// A TCP proxy to `upstream` that forwards both ways until `cut` is set, then
    /// holds its connections open and forwards nothing more: a half-dead peer (a
    /// machine gone, a link cut) that never closes the connection.
    async fn black_hole_proxy(upstream: String) -> (String, Arc<AtomicBool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, cut2.clone()));
                tokio::spawn(pump(ro, wi, cut2.clone()));
            }
        });
        (addr, cut)
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut: Arc<AtomicBool>,
    ) {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cut.load(Ordering::SeqCst) {
                // keep both halves open, forward nothing
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn location(address: &str) -> pb::MapOutputLocation {
        pb::MapOutputLocation {
            stage_id: 0,
            map_task: 0,
            attempt: 1,
            address: address.to_string(),
            // no shuffle_dir: always over Flight, never the local-file shortcut
            ..Default::default()
        }
    }

    /// Reads partition 0 of `loc` under `limits` until the stream ends or fails,
    /// within `deadline`: the rows read, or the error's text.
    async fn fetch_all(
        loc: &pb::MapOutputLocation,
        limits: FetchLimits,
        cut_after_first: Option<Arc<AtomicBool>>,
        deadline: Duration,
    ) -> Result<usize, String> {
        let read = async {
            let mut s = fetch_partition_with("j", loc, 0, limits)
                .await
                .map_err(|e| e.to_string())?;
            let mut rows = 0;
            while let Some(b) = s.next().await {
                rows += b.map_err(|e| e.to_string())?.num_rows();
                if let Some(cut) = &cut_after_first {
                    cut.store(true, Ordering::SeqCst);
                }
            }
            Ok(rows)
        };
        tokio::time::timeout(deadline, read)
            .await
            .expect("the fetch hung instead of failing")
    }

    #[tokio::test]
    async fn a_flight_message_over_the_decode_limit_fails_the_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let addr = serve(store_with(dir.path(), 4)).await;
        let loc = location(&addr);
        let rows = fetch_all(&loc, FetchLimits::DEFAULT, None, Duration::from_secs(20)).await;
        assert_eq!(rows, Ok(4 * 8192));
        let small = FetchLimits {
            max_message: 16 << 10,
            ..FetchLimits::DEFAULT
        };
        let e = fetch_all(&loc, small, None, Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(e.contains("map task 0"), "{e}");
        assert!(e.contains("message length too large"), "{e}");
    }

    #[tokio::test]
    async fn a_peer_that_goes_silent_mid_stream_fails_the_fetch_by_keep_alive() {
        let dir = tempfile::tempdir().unwrap();
        // 32 MiB: far more than one stream's window, so the stream needs the peer
        let addr = serve(store_with(dir.path(), 512)).await;
        let (proxy, cut) = black_hole_proxy(addr).await;
        let pings = FetchLimits {
            // the idle timeout alone would take an hour
            idle: Duration::from_secs(3600),
            keep_alive_interval: Duration::from_millis(200),
            keep_alive_timeout: Duration::from_millis(500),
            ..FetchLimits::DEFAULT
        };
        let started = std::time::Instant::now();
        let e = fetch_all(&location(&proxy), pings, Some(cut), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(e.contains("map task 0"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    }

    #[tokio::test]
    async fn a_stream_silent_past_the_idle_timeout_fails_the_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let addr = serve(store_with(dir.path(), 512)).await;
        let (proxy, cut) = black_hole_proxy(addr).await;
        let idle = FetchLimits {
            idle: Duration::from_millis(500),
            ..FetchLimits::DEFAULT
        };
        let e = fetch_all(&location(&proxy), idle, Some(cut), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(e.contains("idle"), "{e}");
    }

    /// A fetch opened but not read yet (an outer join's build side) must not stall the
    /// other fetches sharing its connection.
    #[tokio::test]
    async fn an_unread_fetch_does_not_block_the_others_on_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ShuffleStore {
            root: dir.path().to_path_buf(),
            metrics: Default::default(),
        });
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        // four map outputs of 8 MiB each
        for task in 0..4 {
            let mut w =
                PartitionWriters::create(store.task_dir("j", 0, task, 1), 1, &schema).unwrap();
            for _ in 0..128 {
                let col = Int64Array::from_iter_values(0..8192);
                let b = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(col)]).unwrap();
                w.write(0, &b).unwrap();
            }
            w.finish().unwrap();
        }
        let addr = serve(store).await;
        let ticket = |task| {
            let t = pb::ShuffleTicket {
                job_id: "j".into(),
                stage_id: 0,
                map_task: task,
                attempt: 1,
                partition: 0,
            };
            Ticket::new(t.encode_to_vec())
        };
        let ch = autopipe_common::shuffle::channel_to(&addr).unwrap();
        let mut client = FlightServiceClient::new(ch);
        // Three fetches read one message each, then wait: more unread data than the
        // default connection window (5 MiB in hyper) holds.
        let mut idle = Vec::new();
        for task in 0..3 {
            let mut s = client.do_get(ticket(task)).await.unwrap().into_inner();
            let _first = s.next().await.unwrap().unwrap();
            idle.push(s);
        }
        let read_other = async {
            let mut s = client.do_get(ticket(3)).await.unwrap().into_inner();
            let mut bytes = 0;
            while let Some(m) = s.next().await {
                bytes += m.unwrap().data_body.len();
            }
            bytes
        };
        let bytes = tokio::time::timeout(Duration::from_secs(20), read_other)
            .await
            .expect("the fourth fetch stalled behind the unread ones");
        assert!(bytes >= 8 << 20);
        drop(idle);
    }
}

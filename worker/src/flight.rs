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
    use autopipe_common::util::no_delay;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::time::Duration;

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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let svc = ShuffleFlightService { store };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(arrow_flight::flight_service_server::FlightServiceServer::new(svc))
                .serve_with_incoming(no_delay(listener)),
        );
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

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
use autopipe_proto as pb;
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
        let file = std::fs::File::open(&path).map_err(|e| {
            Status::not_found(format!(
                "shuffle output job {} stage {} map task {} attempt {} partition {} is not on this worker: {e}",
                t.job_id, t.stage_id, t.map_task, t.attempt, t.partition
            ))
        })?;
        let reader = datafusion::arrow::ipc::reader::FileReader::try_new(file, None)
            .map_err(|e| Status::internal(format!("cannot read {}: {e}", path.display())))?;
        let schema = reader.schema();
        self.store.metrics.bytes_served(&path);
        // The IPC reader is synchronous; a blocking task feeds the encoder through a channel.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            for b in reader {
                let item = b.map_err(FlightError::from);
                if tx.blocking_send(item).is_err() {
                    return;
                }
            }
        });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
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

//! The disaster-recovery slot of the API: the service and its messages exist so that clients
//! can be written against them, and every call answers UNIMPLEMENTED until yiyun's disaster
//! recovery is built.

use tonic::{Request, Response, Status};

use crate::proto::{
    Drill, ListProtectionRequest, ListProtectionResponse, RequestDrillRequest, disaster_recovery_server,
};

const NOT_YET: &str = "disaster recovery is not built yet: protection status and drills arrive with it";

pub struct DisasterRecoveryService;

#[tonic::async_trait]
impl disaster_recovery_server::DisasterRecovery for DisasterRecoveryService {
    async fn list_protection(
        &self,
        _request: Request<ListProtectionRequest>,
    ) -> Result<Response<ListProtectionResponse>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    async fn request_drill(&self, _request: Request<RequestDrillRequest>) -> Result<Response<Drill>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }
}

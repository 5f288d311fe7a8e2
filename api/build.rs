//! Compiles the API's .proto files (protoc: Debian's protobuf-compiler, which `.ci/run`
//! installs) into the message types, the gRPC services, and the descriptor set that server
//! reflection serves. Messages also derive serde and utoipa's schema: REST/JSON serves the same
//! types, and the OpenAPI document describes them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/yiyun/api/v1/billing.proto",
        "proto/yiyun/api/v1/disaster_recovery.proto",
        "proto/yiyun/api/v1/jobs.proto",
        "proto/yiyun/api/v1/resource_requests.proto",
    ];
    let mut config = tonic_prost_build::configure()
        .build_client(false)
        .file_descriptor_set_path(out.join("yiyun_api_v1_descriptor.bin"))
        .type_attribute(".yiyun.api.v1", "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]")
        .type_attribute(".yiyun.api.v1", "#[serde(rename_all = \"camelCase\", default)]")
        // What the OpenAPI document says of a quota request beyond the types.
        .field_attribute(
            ".yiyun.api.v1.CreateResourceRequestRequest.reason",
            "#[schema(min_length = 1, max_length = 1024)]",
        )
        .field_attribute(
            ".yiyun.api.v1.CreateResourceRequestRequest.idempotency_key",
            "#[schema(max_length = 128)]",
        )
        // A drill's REST body: the tenant is the path's; the namespace is required.
        .field_attribute(".yiyun.api.v1.RequestDrillRequest.tenant", "#[schema(ignore)]")
        .field_attribute(
            ".yiyun.api.v1.RequestDrillRequest.namespace",
            "#[schema(required = true, pattern = r\"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$\")]",
        )
        .field_attribute(
            ".yiyun.api.v1.RequestDrillRequest.policy",
            "#[schema(max_length = 253, pattern = r\"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*)?$\")]",
        )
        .field_attribute(".yiyun.api.v1.RequestDrillRequest.idempotency_key", "#[schema(max_length = 128)]")
        .field_attribute(
            ".yiyun.api.v1.DecideResourceRequestRequest.message",
            "#[schema(max_length = 1024)]",
        );
    // JSON Schema counts 4.0 as an integer: a job's JSON body may write its integers so.
    for field in ["gpus", "gpu_milli", "replicas", "data_gigabytes", "deadline_seconds"] {
        config = config.field_attribute(
            format!(".yiyun.api.v1.SubmitJobRequest.{field}"),
            "#[serde(deserialize_with = \"crate::shared::integral\")]",
        );
    }
    config.compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}

//! Logs through `tracing`, and traces to an OpenTelemetry collector when one is configured.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(clap::Args, Debug)]
pub struct Config {
    /// Log format.
    #[arg(long, global = true, env = "YIYUN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://otel-collector:4317); none by default.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// Flushes exported traces when dropped through [`Guard::shutdown`].
pub struct Guard(Option<SdkTracerProvider>);

impl Guard {
    /// Flushes on a blocking thread: the exporter's gRPC connection is driven by the calling
    /// runtime, which must stay free to send the last spans.
    pub async fn shutdown(self) {
        let Some(provider) = self.0 else { return };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("cannot flush traces: {err}"),
            Err(err) => eprintln!("cannot flush traces: {err}"),
        }
    }
}

/// Installs the global subscriber. Log levels follow `RUST_LOG` (default `info`).
pub fn init(config: &Config, service: &'static str) -> anyhow::Result<Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match config.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, service)?),
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("cannot install the tracing subscriber")?;
    Ok(Guard(provider))
}

fn tracer_provider(endpoint: &str, service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("cannot set up trace export to {endpoint}"))?;
    // The batch task gets a thread of its own: on a current-thread runtime, flushing at shutdown
    // would otherwise wait for a task that only the waiting thread could run.
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::TokioCurrentThread).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

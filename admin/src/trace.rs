//! What ties a component's log lines to its traces.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Records the span's OpenTelemetry trace id in its `trace_id` field (declared
/// `trace_id = tracing::field::Empty`), so every log line inside the span names the trace it
/// belongs to. Without trace export there is no trace, and the field stays empty.
pub fn with_trace_id(span: tracing::Span) -> tracing::Span {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
    span
}

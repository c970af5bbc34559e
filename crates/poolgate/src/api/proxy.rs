//! What both proxy surfaces (OpenAI, Anthropic) do around [`crate::proxy::forward`]: authenticate
//! against this request's snapshot (a failure is answered without a usage record: the caller is
//! unknown; it is still observed: metrics and the access log count it), read the per-request
//! options and the body, parse it in the client's format, record a refusal, forward, and render
//! the answer — or the error, in the client's format — with the headers the proxy adds.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName};
use axum::response::Response;
use bytes::Bytes;
use tokio::time::Instant;

use super::auth::authenticate_client;
use super::error::ApiError;
use super::json::read_body;
use super::request_id::RequestId;
use crate::domain::{now_ms, InvalidRequest};
use crate::limits::ConcurrencyPermit;
use crate::providers::Endpoint;
use crate::proxy::route::sticky_key;
use crate::proxy::{
    forward, observe, observe_unauthenticated, record_refused, Forwarded, Inbound, ProxyBody,
    ProxyResponse, RequestContext,
};
use crate::state::DataPlane;

/// Header `x-poolgate-max-wait-ms`: how long this request may wait for a ready backend.
pub fn max_wait_header(headers: &HeaderMap) -> Result<Option<std::time::Duration>, ApiError> {
    static MAX_WAIT: HeaderName = HeaderName::from_static("x-poolgate-max-wait-ms");
    let Some(value) = headers.get(&MAX_WAIT) else {
        return Ok(None);
    };
    let millis: u64 = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ms| ms <= 600_000)
        .ok_or_else(|| {
            InvalidRequest::param(
                "`x-poolgate-max-wait-ms` must be a whole number of milliseconds up to 600000",
                "x-poolgate-max-wait-ms",
                "invalid_header",
            )
        })?;
    Ok(Some(std::time::Duration::from_millis(millis)))
}

/// Serves one proxied request: `parse` reads the body in the client's format, `render` writes an
/// error in it.
pub async fn serve(
    data: &DataPlane,
    endpoint: Endpoint,
    request: Request,
    parse: impl FnOnce(Bytes, &HeaderMap) -> Result<Inbound, InvalidRequest>,
    render: fn(ApiError) -> Response,
) -> Response {
    let received = Instant::now();
    let received_ms = now_ms();
    let (parts, body) = request.into_parts();
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    let live = data.live();
    let client_key = match authenticate_client(data, &live, &parts.headers) {
        Ok(key) => key,
        Err(error) => {
            observe_unauthenticated(
                data,
                request_id.as_str(),
                received,
                endpoint,
                &parts.headers,
                error.status_code().as_u16(),
                error.kind(),
            );
            return render(error);
        }
    };
    let max_wait = max_wait_header(&parts.headers);
    let ctx = RequestContext {
        request_id: request_id.as_str().to_owned(),
        client_key,
        received,
        received_ms,
        max_wait: max_wait.as_ref().ok().copied().flatten(),
        live,
        estimate_settings: data.config.tokens,
        estimate: std::sync::OnceLock::new(),
    };
    // Refused after authentication: recorded (and observed, as an unrouted request) like every
    // other request.
    let refuse = |error: ApiError| {
        let kind = error.code().unwrap_or(error.kind());
        let (observation, _) = observe(data, &ctx, endpoint, None, &parts.headers);
        let (headers, durable) =
            record_refused(data, &ctx, endpoint, error.status_code(), kind, observation);
        let response = with_headers(render(error), headers);
        async move {
            durable.await;
            response
        }
    };
    // Overload, answered at once before the body is read: the key's own concurrency first (a
    // greedy key gets 429, not everyone's 503), then the gateway's.
    let key_permit = match &ctx.client_key {
        Some(key) => match key.runtime.begin() {
            Some(permit) => Some(permit),
            None => return refuse(ApiError::key_concurrency(key.runtime.max_parallel())).await,
        },
        None => None,
    };
    let Some(gateway_permit) = data.in_flight.try_acquire() else {
        return refuse(ApiError::overloaded(data.in_flight.max())).await;
    };
    let permits = InFlight {
        _key: key_permit,
        _gateway: gateway_permit,
    };
    let inbound = match max_wait {
        Err(error) => Err(error),
        Ok(_) => read_body(body, data.config.proxy.max_body_bytes)
            .await
            .and_then(|body| parse(body, &parts.headers).map_err(ApiError::from)),
    };
    let inbound = match inbound {
        Ok(mut inbound) => {
            inbound.affinity = sticky_key(&ctx.live, &inbound, &parts.headers);
            inbound
        }
        Err(error) => return refuse(error).await,
    };
    let (observation, routed) = observe(data, &ctx, endpoint, Some(&inbound), &parts.headers);
    let Forwarded { result, headers } = forward(data, ctx, inbound, observation, routed).await;
    let response = match result {
        Ok(response) => into_response(response),
        Err(error) => render(ApiError::from(error)),
    };
    // The slots are free when the answer's body is done (a stream: when it ends).
    with_headers(response, headers).map(|body| {
        Body::new(HoldingBody {
            body,
            _held: permits,
        })
    })
}

/// Adds the proxy's headers (rate limits, routing) to an answer.
fn with_headers(mut response: Response, headers: HeaderMap) -> Response {
    response.headers_mut().extend(headers);
    response
}

/// The concurrency slots of one request.
struct InFlight {
    _key: Option<ConcurrencyPermit>,
    _gateway: ConcurrencyPermit,
}

pin_project_lite::pin_project! {
    /// An answer body that holds its request's concurrency slots until it is done or dropped.
    struct HoldingBody {
        #[pin]
        body: Body,
        _held: InFlight,
    }
}

impl http_body::Body for HoldingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Converts the proxy's answer into an axum response.
fn into_response(response: ProxyResponse) -> Response {
    let body = match response.body {
        ProxyBody::Full(bytes) => Body::from(bytes),
        ProxyBody::Stream(stream) => Body::from_stream(stream),
    };
    let mut out = Response::new(body);
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    out
}

//! The OTLP exporter's HTTP client: the gateway's own reqwest (rustls) client, driven on the
//! gateway's tokio runtime. The SDK's batch span processor exports from its own thread, where
//! no tokio reactor runs; each export is therefore spawned onto the runtime and awaited from
//! there. (`opentelemetry-http`'s bundled reqwest support targets reqwest 0.13, which would put
//! a second reqwest and TLS stack in the binary.)

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use opentelemetry_http::{HttpClient, HttpError};

/// Largest collector answer read (they are a few bytes; anything bigger is refused).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub(crate) struct RuntimeHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl RuntimeHttpClient {
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, runtime })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the OTLP collector's answer is larger than {MAX_RESPONSE_BYTES} bytes")]
struct ResponseTooLarge;

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let exchange = self.runtime.spawn(async move {
            let mut response = client.execute(request).await?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let mut body = BytesMut::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Box::new(ResponseTooLarge) as HttpError);
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, HttpError>((status, headers, body.freeze()))
        });
        let (status, headers, body) = exchange.await??;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

//! The cost of TPM limits (issue #11) on the hot path: the same closed-loop load through three
//! poolgates with one backend each — TPM off (the baseline), and TPM limits on the backend and
//! the client key (150 000 000 a minute: never refused, so every request is estimated, reserved
//! and settled) with the upstream model an OpenAI one (the prompt counted with tiktoken's
//! `o200k_base`) or an unknown one (`ceil(bytes / 3)`).

use std::net::SocketAddr;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use hyper::Method;

use super::features::Configuration;
use super::Bench;
use crate::load::request_once;
use crate::stack::{BackendDef, Mock, PoolgateSpec, ADMIN_TOKEN};

/// Connections for the comparison.
const CONNECTIONS: usize = 16;

/// Every configuration's label, baseline first.
pub const LABELS: [&str; 3] = [
    "TPM off",
    "TPM on, tiktoken (gpt-4o-mini)",
    "TPM on, bytes estimate",
];

/// A TPM limit no benchmark reaches.
const TPM: u64 = 150_000_000;

fn spec(name: &str, mock: &Mock, upstream_model: &str) -> PoolgateSpec {
    PoolgateSpec {
        name: name.to_owned(),
        backends: vec![BackendDef {
            name: "fast-0".to_owned(),
            upstream: mock.addr,
            models: vec![("bench".to_owned(), upstream_model.to_owned())],
            rpm_limit: 0,
            http_version: None,
        }],
        churn_cooldown: false,
        client_rpm: 0,
        extra_args: Vec::new(),
        max_in_flight: None,
    }
}

/// Sets `tpm_limit` on every backend and client key of the poolgate at `addr`.
async fn limit_tokens(addr: SocketAddr) -> Result<()> {
    for (list, item) in [
        ("/admin/api/backends", "backends"),
        ("/admin/api/keys", "keys"),
    ] {
        let (status, body) = request_once(addr, Method::GET, list, Some(ADMIN_TOKEN), None).await?;
        let items: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|error| anyhow!("listing {item} answered {status}: {error}"))?;
        for id in items
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["id"].as_str())
        {
            let patch = serde_json::json!({ "tpm_limit": TPM }).to_string();
            let (status, _) = request_once(
                addr,
                Method::PATCH,
                &format!("{list}/{id}"),
                Some(ADMIN_TOKEN),
                Some(Bytes::from(patch)),
            )
            .await?;
            if !status.is_success() {
                return Err(anyhow!(
                    "setting tpm_limit on {item} `{id}` answered {status}"
                ));
            }
        }
    }
    Ok(())
}

impl Bench<'_> {
    pub(super) async fn tokens(&mut self, fast: &Mock) -> Result<()> {
        let configurations = [
            Configuration {
                label: LABELS[0],
                spec: spec("tpm-off", fast, "gpt-4o-mini"),
                extra_toml: "",
            },
            Configuration {
                label: LABELS[1],
                spec: spec("tpm-tiktoken", fast, "gpt-4o-mini"),
                extra_toml: "",
            },
            Configuration {
                label: LABELS[2],
                spec: spec("tpm-bytes", fast, "bench-upstream"),
                extra_toml: "",
            },
        ];
        // The limits go on through the admin API before the load starts (the baseline has none).
        let running = self
            .compare_configurations_then(
                "tokens_c16",
                &format!("TPM limits, closed loop, {CONNECTIONS} connections"),
                "tokens",
                CONNECTIONS,
                &configurations,
                |index, addr| async move {
                    if index == 0 {
                        Ok(())
                    } else {
                        limit_tokens(addr).await
                    }
                },
            )
            .await?;
        drop(running);
        Ok(())
    }
}

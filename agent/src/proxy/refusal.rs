//! The answers egret gives a sandbox's request itself instead of the
//! provider's: one [`Refusal`] per kind, and the one place that maps each
//! to its HTTP status, its `error.type` on the transaction record and the
//! JSON body the sandbox reads.
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::upstream::{full, ProxyBody, UpstreamError};
use crate::budget::{self, BudgetStatus};

/// Most of a refused request's body read (and discarded) before answering.
const REFUSED_BODY_DRAIN: usize = 1024 * 1024;
/// Longest wait for that body.
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(2);

/// Why egret answers a request itself.
#[derive(Debug)]
pub enum Refusal {
    /// The sandbox already has `maxRequestsPerSandbox` requests in flight.
    RequestLimit,
    /// TLS: a Host / `:authority` (`named`) that is not `host`, the name the
    /// upstream TLS verifies.
    HostSniMismatch { named: String, host: String },
    /// Plain HTTP: a routed Host claim (`named`) the node's resolver does
    /// not map to the dialled address (`host` is what the connection is
    /// recorded under).
    DestinationUnverified { named: String, host: String },
    /// CONNECT or a protocol upgrade other than WebSocket (h2c): not
    /// proxied. (WebSocket upgrades are relayed: `proxy::websocket`.)
    Upgrade,
    /// The policy does not allow `host`.
    PolicyDenied { host: String, reason: &'static str },
    /// The agent's daily token budget is used up; the body is in the
    /// provider's own error format when the provider is known.
    BudgetExhausted {
        provider: Option<&'static str>,
        status: BudgetStatus,
    },
    /// The request body could not be read.
    ClientBody,
    /// The provider could not be reached, or failed before its response head.
    Upstream { host: String, error: UpstreamError },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::RequestLimit | Refusal::BudgetExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Refusal::HostSniMismatch { .. } | Refusal::DestinationUnverified { .. } => {
                StatusCode::MISDIRECTED_REQUEST
            }
            Refusal::Upgrade => StatusCode::NOT_IMPLEMENTED,
            Refusal::PolicyDenied { .. } => StatusCode::FORBIDDEN,
            Refusal::ClientBody => StatusCode::BAD_REQUEST,
            Refusal::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The transaction's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Refusal::RequestLimit => "sandbox_request_limit",
            Refusal::HostSniMismatch { .. } => "host_sni_mismatch",
            Refusal::DestinationUnverified { .. } => "destination_unverified",
            Refusal::Upgrade => "upgrade_refused",
            Refusal::PolicyDenied { .. } => "policy_denied",
            Refusal::BudgetExhausted { .. } => "budget_exhausted",
            Refusal::ClientBody => "client_body_error",
            Refusal::Upstream { error, .. } => error.kind(),
        }
    }

    /// Whether the record says `egret.policy.denied = true`: the request
    /// was refused because of where it goes.
    pub fn policy_denied(&self) -> bool {
        matches!(
            self,
            Refusal::HostSniMismatch { .. }
                | Refusal::DestinationUnverified { .. }
                | Refusal::PolicyDenied { .. }
        )
    }

    /// The JSON body the sandbox gets.
    pub fn body(&self) -> String {
        match self {
            Refusal::RequestLimit => error_body(
                "sandbox_request_limit",
                "too many requests in flight from this sandbox",
            ),
            Refusal::HostSniMismatch { named, host }
            | Refusal::DestinationUnverified { named, host } => error_body(
                self.error_type(),
                &format!("{named}: not where this connection goes ({host})"),
            ),
            Refusal::Upgrade => {
                error_body("upgrade_refused", "egret does not proxy protocol upgrades")
            }
            Refusal::PolicyDenied { host, reason } => {
                error_body("egress_denied", &format!("{host}: {reason}"))
            }
            Refusal::BudgetExhausted { provider, status } => {
                budget::exhausted_body(*provider, status).0
            }
            Refusal::ClientBody => error_body("bad_request", "request body could not be read"),
            Refusal::Upstream { host, error } => {
                error_body("upstream_error", &format!("{host}: {error}"))
            }
        }
    }

    /// The response, for a request whose body was already read.
    pub fn response(&self) -> Response<ProxyBody> {
        let mut r = Response::new(full(self.body()));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    /// The response to `req`, after reading its body (bounded in size and
    /// time), so an HTTP/2 stream ends cleanly instead of being reset while
    /// the client is still sending.
    pub async fn answer(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let drain = Limited::new(req.into_body(), REFUSED_BODY_DRAIN).collect();
        let _ = tokio::time::timeout(REFUSED_BODY_WAIT, drain).await;
        self.response()
    }
}

fn error_body(kind: &str, message: &str) -> String {
    serde_json::json!({"error": {"type": kind, "message": message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every() -> Vec<Refusal> {
        let named = || "evil.example".to_owned();
        let host = || "api.openai.com".to_owned();
        vec![
            Refusal::RequestLimit,
            Refusal::HostSniMismatch {
                named: named(),
                host: host(),
            },
            Refusal::DestinationUnverified {
                named: named(),
                host: host(),
            },
            Refusal::Upgrade,
            Refusal::PolicyDenied {
                host: host(),
                reason: "no route allows this host",
            },
            Refusal::BudgetExhausted {
                provider: None,
                status: BudgetStatus {
                    used: 120,
                    max: Some(100),
                    ..BudgetStatus::default()
                },
            },
            Refusal::ClientBody,
            Refusal::Upstream {
                host: host(),
                error: UpstreamError::Connect {
                    dst: "192.0.2.1:443".parse().unwrap(),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                },
            },
            Refusal::Upstream {
                host: host(),
                error: UpstreamError::Name("bad name".into()),
            },
        ]
    }

    #[test]
    fn each_refusal_has_its_status_and_error_type() {
        let got: Vec<(u16, &str, bool)> = every()
            .iter()
            .map(|r| (r.status().as_u16(), r.error_type(), r.policy_denied()))
            .collect();
        assert_eq!(
            got,
            [
                (429, "sandbox_request_limit", false),
                (421, "host_sni_mismatch", true),
                (421, "destination_unverified", true),
                (501, "upgrade_refused", false),
                (403, "policy_denied", true),
                (429, "budget_exhausted", false),
                (400, "client_body_error", false),
                (502, "upstream_connect", false),
                (502, "upstream_tls", false),
            ]
        );
    }

    #[test]
    fn bodies_are_the_documented_json() {
        let bodies: Vec<serde_json::Value> = every()
            .iter()
            .map(|r| serde_json::from_str(&r.body()).unwrap())
            .collect();
        let e = |kind: &str, message: &str| serde_json::json!({"error": {"type": kind, "message": message}});
        assert_eq!(
            bodies[0],
            e(
                "sandbox_request_limit",
                "too many requests in flight from this sandbox"
            )
        );
        assert_eq!(
            bodies[1],
            e(
                "host_sni_mismatch",
                "evil.example: not where this connection goes (api.openai.com)"
            )
        );
        assert_eq!(
            bodies[2],
            e(
                "destination_unverified",
                "evil.example: not where this connection goes (api.openai.com)"
            )
        );
        assert_eq!(
            bodies[3],
            e("upgrade_refused", "egret does not proxy protocol upgrades")
        );
        assert_eq!(
            bodies[4],
            e("egress_denied", "api.openai.com: no route allows this host")
        );
        assert_eq!(
            bodies[5],
            e(
                "budget_exhausted",
                "egret: daily token budget exhausted (120 of 100 tokens used)"
            )
        );
        assert_eq!(
            bodies[6],
            e("bad_request", "request body could not be read")
        );
        assert_eq!(bodies[7]["error"]["type"], "upstream_error");
        assert!(bodies[7]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("api.openai.com: connecting to 192.0.2.1:443: "));
    }

    #[test]
    fn responses_are_json_with_the_status() {
        for r in every() {
            let resp = r.response();
            assert_eq!(resp.status(), r.status());
            assert_eq!(
                resp.headers()[http::header::CONTENT_TYPE],
                "application/json"
            );
        }
    }
}

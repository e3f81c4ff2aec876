//! Asking the server, the same way for connect mode and `doctor`: the keepalive GET, the
//! worker handshake, and what a refused handshake means.

use std::time::Duration;

use chaarfm_shared::server::{announces_protocol2, PROTOCOL, PROTOCOL_HEADER};
use tokio_tungstenite::tungstenite;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

/// A worker connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// `GET {base}/api/keepalive` (blocking: run it on a blocking thread): the status, or
/// why nothing answered.
pub fn keepalive(base: &str, timeout: Duration) -> Result<u16, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .get(format!("{}/api/keepalive", base.trim_end_matches('/')))
        .call()
        .map(|r| r.status().as_u16())
}

/// Why a worker handshake failed.
#[derive(Debug)]
pub enum Handshake {
    /// The server answered the upgrade with a 4xx: final, retrying cannot help.
    Refused(Refusal),
    /// Anything else (network, 5xx, TLS): worth trying again.
    Failed(String),
    TimedOut,
}

/// A 4xx to the worker endpoint, and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The message, naming the code (masked) or the URL and what to check.
    pub message: String,
}

impl Refusal {
    /// 401/403: the code; another 4xx: a URL without a worker endpoint.
    pub fn new(status: u16, base: &str, masked_code: &str) -> Refusal {
        let message = if status == 401 || status == 403 {
            format!(
                "the server refused pairing code {masked_code} (HTTP {status}): check --code / CHAARFM_CODE against the code shown on the /ingest page"
            )
        } else {
            format!(
                "{} answered HTTP {status} to the worker endpoint: that URL has no ChaarFM worker endpoint (check --url / CHAARFM_URL)",
                base.trim_end_matches('/')
            )
        };
        Refusal { status, message }
    }
}

/// An open worker connection.
pub struct Opened {
    pub ws: Ws,
    /// The server announced protocol 2 in its handshake answer ([`PROTOCOL_HEADER`]).
    pub protocol2: bool,
}

/// Opens a worker connection to `url` (from `server::worker_url`), bounded in time,
/// offering protocol 2 in its [`PROTOCOL_HEADER`].
pub async fn handshake(url: &str, base: &str, masked_code: &str) -> Result<Opened, Handshake> {
    let mut req = url
        .into_client_request()
        .map_err(|e| Handshake::Failed(e.to_string()))?;
    req.headers_mut()
        .insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::connect_async(req)).await {
        Ok(Ok((ws, answer))) => {
            let said = answer.headers().get(PROTOCOL_HEADER);
            Ok(Opened {
                ws,
                protocol2: announces_protocol2(said.and_then(|v| v.to_str().ok())),
            })
        }
        Ok(Err(tungstenite::Error::Http(resp))) if resp.status().is_client_error() => Err(
            Handshake::Refused(Refusal::new(resp.status().as_u16(), base, masked_code)),
        ),
        Ok(Err(e)) => Err(Handshake::Failed(e.to_string())),
        Err(_) => Err(Handshake::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_what_to_check() {
        let code = Refusal::new(403, "https://h/", "AB***");
        assert!(
            code.message.contains("refused pairing code AB***") && code.message.contains("/ingest")
        );
        let url = Refusal::new(404, "https://h/", "AB***");
        assert!(
            url.message.starts_with("https://h answered HTTP 404"),
            "{}",
            url.message
        );
        assert!(url.message.contains("no ChaarFM worker endpoint"));
    }
}

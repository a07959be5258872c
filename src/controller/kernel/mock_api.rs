//! A mock API server for unit tests of the Kubernetes side of effects (kube-rs's own
//! pattern, with `tower-test`): answers a script of responses in order (500 once it runs
//! out) and records what was asked.

use kube::client::Body;

/// One request the mock API server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Asked {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub path: String,
    /// Whether the client asked for metadata only (`PartialObjectMetadata`).
    pub metadata_only: bool,
}

/// A client talking to the mock server, and the server's task: it ends, returning every
/// request, once the client (and every clone of it) is dropped.
pub(crate) fn serve(
    script: Vec<(u16, serde_json::Value)>,
) -> (kube::Client, tokio::task::JoinHandle<Vec<Asked>>) {
    let (svc, mut handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut script = script.into_iter();
        while let Some((req, send)) = handle.next_request().await {
            seen.push(Asked {
                method: req.method().to_string(),
                uri: req.uri().to_string(),
                path: req.uri().path().to_owned(),
                metadata_only: req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("PartialObjectMetadata")),
            });
            let (status, body) = script.next().unwrap_or((500, serde_json::json!({})));
            send.send_response(
                http::Response::builder()
                    .status(status)
                    .body(Body::from(body.to_string().into_bytes()))
                    .expect("response"),
            );
        }
        seen
    });
    (kube::Client::new(svc, "acme"), server)
}

//! The real `KindeClient` against a tiny hostile HTTP server, for answers the emulator
//! cannot give: bodies far larger than any Kinde answer, and a `Content-Length` that
//! announces one. The client must stop reading at its cap, say so as a bad response, and
//! never buffer the whole thing. Asserted through bytes the server managed to send and the
//! error kind, never through timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kinde_m2m_operator::kinde::{
    ErrorKind, KindeClient, KindeConfig, KindeError, KindeMetrics, Transient,
};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Far above the client's 4 MiB cap: a client that buffers everything reads all of it.
const HUGE: u64 = 128 * 1024 * 1024;
/// What the server may get out before the client hangs up: the cap plus what the
/// loopback socket buffers hold. Well under [`HUGE`].
const CUT_OFF_BELOW: u64 = 32 * 1024 * 1024;

#[derive(Clone, Copy)]
enum Reply {
    /// A valid token response.
    Token,
    /// `status` with a chunked body of `total` bytes of JSON whitespace.
    Stream { status: u16, total: u64 },
    /// 200 announcing `Content-Length: announced`, then a few bytes and silence.
    Lying { announced: u64 },
    /// A `getAPIs` page of `items` APIs (ignoring `page_size`), always with a new
    /// `next_token`.
    Pages { items: usize },
}

struct Hostile {
    addr: SocketAddr,
    /// Body bytes the server got into the socket, over all connections.
    written: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Hostile {
    /// Serves `token` on `/oauth2/token` and `other` on every other path.
    async fn start(token: Reply, other: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (w, r) = (written.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (w, r) = (w.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, token, other, &w, &r).await;
                });
            }
        });
        Self {
            addr,
            written,
            requests,
        }
    }

    fn client(&self) -> KindeClient {
        let mut c = KindeConfig::new(
            url::Url::parse(&format!("http://{}", self.addr)).unwrap(),
            "cid".into(),
            SecretString::from("secret"),
        );
        // Long enough that a client waiting for a lying Content-Length is seen to time out
        // (a Retryable error) rather than refuse at once (a Decode error).
        c.request_timeout = Duration::from_secs(5);
        c.requests_per_second = 0.0;
        c.max_attempts = 2;
        c.base_backoff = Duration::from_millis(5);
        c.max_backoff = Duration::from_secs(1);
        KindeClient::new(c, KindeMetrics::default()).unwrap()
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut conn: TcpStream,
    token: Reply,
    other: Reply,
    written: &AtomicU64,
    requests: &AtomicU64,
) -> std::io::Result<()> {
    // The request head, then its body (by Content-Length) so the client sees no reset.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request_no = requests.fetch_add(1, Ordering::SeqCst);
    let reply = if head.starts_with("post /oauth2/token ") {
        token
    } else {
        other
    };
    match reply {
        Reply::Token => {
            let body = r#"{"access_token":"t","token_type":"bearer","expires_in":3600}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
        }
        Reply::Stream { status, total } => {
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            );
            conn.write_all(resp.as_bytes()).await?;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0u64;
            while sent < total {
                conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                conn.write_all(&chunk).await?;
                conn.write_all(b"\r\n").await?;
                sent += chunk.len() as u64;
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            conn.write_all(b"0\r\n\r\n").await?;
        }
        Reply::Pages { items } => {
            let api = r#"{"id":"api_x","name":"n","audience":"https://x"}"#;
            let body = format!(
                r#"{{"apis":[{}],"next_token":"page{request_no}"}}"#,
                vec![api; items].join(",")
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
            written.fetch_add(body.len() as u64, Ordering::SeqCst);
        }
        Reply::Lying { announced } => {
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {announced}\r\nconnection: close\r\n\r\n{{\"apis\":"
            );
            conn.write_all(resp.as_bytes()).await?;
            written.fetch_add(8, Ordering::SeqCst);
            // Never send the rest: a client waiting for it only stops at its timeout.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
    conn.shutdown().await
}

fn assert_bad_response(err: &KindeError, op: &str) {
    assert_eq!(err.kind(), ErrorKind::Decode, "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(op) && text.contains("4096 KiB limit"),
        "{text}"
    );
}

#[tokio::test]
async fn a_huge_body_is_cut_off_at_the_cap() {
    let server = Hostile::start(
        Reply::Token,
        Reply::Stream {
            status: 200,
            total: HUGE,
        },
    )
    .await;
    let client = server.client();
    let err = client.list_apis(false).await.unwrap_err();
    let written = server.written();
    println!("server wrote {written} bytes of a {HUGE}-byte body");
    assert!(written < CUT_OFF_BELOW, "client read {written} bytes");
    assert_bad_response(&err, "getAPIs");
    // A bad response is not retried.
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        2,
        "token + one call"
    );
}

#[tokio::test]
async fn a_huge_token_response_is_cut_off_at_the_cap() {
    let server = Hostile::start(
        Reply::Stream {
            status: 200,
            total: HUGE,
        },
        Reply::Token,
    )
    .await;
    let err = server.client().get_api("api_1").await.unwrap_err();
    let written = server.written();
    println!("server wrote {written} bytes of a {HUGE}-byte token response");
    assert!(written < CUT_OFF_BELOW, "client read {written} bytes");
    assert_bad_response(&err, "token");
}

#[tokio::test]
async fn a_huge_error_body_is_cut_off_and_the_status_still_counts() {
    let server = Hostile::start(
        Reply::Token,
        Reply::Stream {
            status: 503,
            total: HUGE,
        },
    )
    .await;
    let err = server.client().list_apis(false).await.unwrap_err();
    let written = server.written();
    println!("server wrote {written} bytes over two {HUGE}-byte 503 bodies");
    assert!(written < 2 * CUT_OFF_BELOW, "client read {written} bytes");
    // Still a 503, retried once (max_attempts 2), both bodies cut off.
    assert!(
        matches!(
            err,
            KindeError::Retryable {
                reason: Transient::Server(503),
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_content_length_beyond_the_cap_is_refused_unread() {
    let server = Hostile::start(Reply::Token, Reply::Lying { announced: 1 << 30 }).await;
    let err = server.client().list_apis(false).await.unwrap_err();
    // Waiting for the announced GiB would end in a timeout (Retryable) instead.
    assert_bad_response(&err, "getAPIs");
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        2,
        "token + one call"
    );
}

#[tokio::test]
async fn a_listing_that_never_ends_stops_at_the_item_cap() {
    // Pages of 10 000 APIs each (a server ignoring page_size=100), each with a new next
    // token. The client stops once it holds 100 000 items (1000 full pages' worth)
    // instead of collecting 1000 such pages (10 million items).
    let server = Hostile::start(Reply::Token, Reply::Pages { items: 10_000 }).await;
    let err = server.client().list_apis(false).await.unwrap_err();
    let pages = server.requests.load(Ordering::SeqCst) - 1;
    println!("{pages} pages read, {} bytes", server.written());
    assert!(pages <= 11, "read {pages} pages");
    assert_eq!(err.kind(), ErrorKind::Decode, "{err:?}");
    assert!(err.to_string().contains("100000 items"), "{err}");
}

//! A TCP proxy that a test can freeze: it then stops forwarding in both directions but keeps
//! every socket open, as when a network path silently drops packets (no RST, no FIN). The
//! endpoints only notice through their own timeouts, which is what such a test is about.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Forwards `127.0.0.1:<port>` to an upstream address until frozen; stopped on drop.
pub struct FreezableProxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl FreezableProxy {
    /// Listens on a free loopback port (call on the runtime that should run it).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, _) = watch::channel(false);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let frozen = frozen.clone();
            let tasks = tasks.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    // Accepted even while frozen: the client sees a connection that never
                    // answers, not a refusal.
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (client_r, client_w) = client.into_split();
                    let (server_r, server_w) = server.into_split();
                    let up = tokio::spawn(pump(client_r, server_w, frozen.subscribe()));
                    let down = tokio::spawn(pump(server_r, client_w, frozen.subscribe()));
                    let mut tasks = tasks.lock().unwrap();
                    tasks.push(up.abort_handle());
                    tasks.push(down.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        Ok(Self {
            addr,
            frozen,
            tasks,
        })
    }

    /// Stops forwarding; connections stay open, data waits.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again (what was held goes through).
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Copies `from` to `to` while not frozen. Bytes read just as the freeze begins are held
/// until a thaw; while frozen nothing is read, so the kernel buffers fill as on a dead link.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !until(&mut frozen, false).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = until(&mut frozen, true) => continue,
        };
        if !until(&mut frozen, false).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until the frozen flag is `want`; `false` once the proxy is gone.
async fn until(frozen: &mut watch::Receiver<bool>, want: bool) -> bool {
    loop {
        if *frozen.borrow_and_update() == want {
            return true;
        }
        if frozen.changed().await.is_err() {
            return false;
        }
    }
}

/// The `host:port` of the (first) cluster server in `kubeconfig`.
pub fn kubeconfig_server(kubeconfig: &Path) -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("server: https://"))
        .context("no `server: https://...` line in the kubeconfig")?
        .trim()
        .parse()
        .context("the kubeconfig's server is not an IP:port")
}

/// Writes a copy of `kubeconfig` whose cluster server is `https://<via>` (same credentials,
/// TLS settings and context) to `out`.
pub fn kubeconfig_via(kubeconfig: &Path, via: SocketAddr, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut replaced = false;
    let rewritten: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if !replaced && trimmed.starts_with("server: https://") {
                replaced = true;
                let indent = &line[..line.len() - trimmed.len()];
                format!("{indent}server: https://{via}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    anyhow::ensure!(
        replaced,
        "no `server: https://...` line in {}",
        kubeconfig.display()
    );
    std::fs::write(out, rewritten.join("\n") + "\n")?;
    Ok(())
}

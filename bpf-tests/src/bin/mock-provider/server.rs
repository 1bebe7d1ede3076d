//! Serving: listeners, the accept loop, shutdown.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::routing::handle;
use crate::shared::State;
use crate::{write_atomic, Args, MockError};

pub(crate) async fn serve(
    args: Args,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    ca_dir: PathBuf,
) -> Result<(), MockError> {
    let state = Arc::new(State {
        sessions: Mutex::new(HashSet::new()),
        legacy: Default::default(),
        counter: AtomicU64::new(1),
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
            ^ u64::from(std::process::id()),
        stream_delay: Duration::from_millis(args.stream_delay_ms),
    });

    let mut tls_addrs = Vec::new();
    let mut plain_addrs = Vec::new();
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let (l, local) = bind(*addr).await?;
        tls_addrs.push(local.to_string());
        listeners.push((l, tls_config.clone()));
    }
    for addr in &args.listen_plain {
        let (l, local) = bind(*addr).await?;
        plain_addrs.push(local.to_string());
        listeners.push((l, None));
    }

    let ready = json!({
        "pid": std::process::id(),
        "tls": tls_addrs,
        "plain": plain_addrs,
        "ca_cert": ca_dir.join("ca.crt"),
    });
    println!("mock-provider ready {ready}");
    if let Some(path) = &args.ready_file {
        write_atomic(path, format!("{ready}\n").as_bytes(), 0o644)?;
    }

    for (listener, tls) in listeners {
        tokio::spawn(accept_loop(listener, tls, state.clone()));
    }

    wait_for_shutdown().await;
    Ok(())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mock-provider: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), service)
                            .await
                    }
                    Err(e) => {
                        // A client that connects and leaves (a probe, a
                        // load generator stopping) is routine.
                        if e.kind() != std::io::ErrorKind::UnexpectedEof {
                            eprintln!("mock-provider: TLS handshake with {peer}: {e}");
                        }
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await
                }
            };
            if let Err(e) = result {
                // Clients closing mid-stream or before our close_notify (load
                // generators at the end of a timed run) are routine; report
                // the rest.
                let text = e.to_string();
                let routine = [
                    "connection reset",
                    "broken pipe",
                    "shutting down connection",
                ];
                if !routine.iter().any(|r| text.contains(r)) {
                    eprintln!("mock-provider: connection from {peer}: {text}");
                }
            }
        });
    }
}

/// A listener on `addr` and the address it got (port 0 picks one).
async fn bind(
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), MockError> {
    let err = |source| MockError::Bind { addr, source };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

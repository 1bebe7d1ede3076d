//! Helper subcommands the benches run as separate processes (inside a
//! sandbox cgroup or outside it): an SSE timing probe, a connect()/close()
//! loop and a holder of idle TLS connections.
use std::{
    io::{BufRead, Write},
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{err, BenchError, BenchResult, IoContext};

/// Timing does not depend on who signed the certificate: accept any.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector() -> BenchResult<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Msg(format!("TLS config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> BenchResult<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .ctx(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true).ctx(|| "nodelay".into())?;
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|_| BenchError::Msg(format!("bad SNI {sni}")))?;
    tls.connect(name, tcp)
        .await
        .ctx(|| format!("TLS to {addr} ({sni})"))
}

fn runtime() -> BenchResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ctx(|| "runtime".into())
}

/// One HTTP/1.1 response read off a keep-alive connection.
#[derive(Default)]
struct Timed {
    status: u16,
    head: Option<Duration>,
    first_event: Option<Duration>,
    last: Duration,
    body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends GET `path` and reads the whole response (chunked or with a
/// length), noting when the head, the first SSE `data:` line and the end
/// arrived, relative to just before the request was written.
async fn timed_get(s: &mut Tls, host: &str, path: &str, carry: &mut Vec<u8>) -> BenchResult<Timed> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    let t0 = Instant::now();
    s.write_all(req.as_bytes()).await.ctx(|| "write".into())?;
    let mut t = Timed::default();
    let mut raw = std::mem::take(carry);
    let mut tmp = vec![0u8; 64 * 1024];
    // Head.
    let head_end = loop {
        if let Some(i) = find(&raw, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).await.ctx(|| "read".into())?;
        if n == 0 {
            return err("connection closed before the response head");
        }
        raw.extend_from_slice(&tmp[..n]);
    };
    t.head = Some(t0.elapsed());
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    t.status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.contains("transfer-encoding: chunked");
    let length: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let mut buf = raw.split_off(head_end);
    let mut pos = 0usize;
    loop {
        // Consume what is complete in `buf`.
        let done = if chunked {
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    break false;
                };
                let line = String::from_utf8_lossy(&buf[pos..pos + eol]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| BenchError::Msg(format!("bad chunk size {line:?}")))?;
                let need = pos + eol + 2 + size + 2;
                if buf.len() < need {
                    break false;
                }
                if size == 0 {
                    pos = need;
                    break true;
                }
                let data = buf[pos + eol + 2..pos + eol + 2 + size].to_vec();
                t.body.extend_from_slice(&data);
                pos = need;
            }
        } else {
            let want = length.unwrap_or(0);
            let take = (buf.len() - pos).min(want - t.body.len());
            t.body.extend_from_slice(&buf[pos..pos + take]);
            pos += take;
            t.body.len() >= want
        };
        if t.first_event.is_none() && find(&t.body, b"data:").is_some() {
            t.first_event = Some(t0.elapsed());
        }
        if done {
            t.last = t0.elapsed();
            *carry = buf.split_off(pos);
            return Ok(t);
        }
        let n = s.read(&mut tmp).await.ctx(|| "read".into())?;
        if n == 0 {
            return err("connection closed mid-response");
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[derive(Args)]
pub struct SseProbeArgs {
    /// Address to connect to (the original destination; the kernel redirects
    /// a sandboxed probe to egret).
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    sni: String,
    #[arg(long, default_value = "/sse/1000")]
    path: String,
    /// Measured requests.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Unmeasured requests first (connection and upstream warm-up).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

/// Prints one JSON line per measured request:
/// `{"head_us","ttfb_us","ttlb_us","events","bytes"}`.
pub fn sse_probe(a: SseProbeArgs) -> BenchResult<()> {
    runtime()?.block_on(async move {
        let tls = connector()?;
        let mut s = tls_connect(&tls, a.addr, &a.sni).await?;
        let mut carry = Vec::new();
        let out = std::io::stdout();
        for i in 0..a.warmup + a.reps {
            let t = timed_get(&mut s, &a.sni, &a.path, &mut carry).await?;
            if t.status != 200 {
                return err(format!("{} answered {}", a.path, t.status));
            }
            if i < a.warmup {
                continue;
            }
            let events = t.body.windows(5).filter(|w| w == b"data:").count();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let line = serde_json::json!({
                "head_us": t.head.map(us),
                "ttfb_us": t.first_event.map(us),
                "ttlb_us": us(t.last),
                "events": events,
                "bytes": t.body.len(),
            });
            let mut o = out.lock();
            writeln!(o, "{line}").ctx(|| "stdout".into())?;
            o.flush().ctx(|| "stdout".into())?;
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct ConnectLoopArgs {
    #[arg(long)]
    addr: SocketAddrV4,
    /// Source address to bind (a fresh one per run keeps ports from
    /// TIME_WAIT of earlier runs out of the way).
    #[arg(long)]
    src: std::net::Ipv4Addr,
    #[arg(long)]
    count: u64,
}

/// Opens and closes `count` TCP connections back to back; prints
/// `{"count","secs","rate","failed"}`.
pub fn connect_loop(a: ConnectLoopArgs) -> BenchResult<()> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let dst = SockaddrIn::from(a.addr);
    let src = SockaddrIn::from(SocketAddrV4::new(a.src, 0));
    let mut failed = 0u64;
    let t0 = Instant::now();
    for _ in 0..a.count {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| BenchError::Msg(format!("socket: {e}")))?;
        use std::os::fd::AsRawFd;
        // Pick the port at connect() (4-tuple unique), not at bind(): earlier
        // runs' TIME_WAIT sockets would otherwise make bind() search ports.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our own socket with a valid int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        if bind(fd.as_raw_fd(), &src).is_err() || connect(fd.as_raw_fd(), &dst).is_err() {
            failed += 1;
        }
        drop(fd);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "count": a.count,
            "secs": secs,
            "rate": a.count as f64 / secs,
            "failed": failed,
        })
    );
    Ok(())
}

#[derive(Args)]
pub struct IdleConnsArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    sni: String,
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value = "/json/16")]
    path: String,
}

/// Opens `n` TLS connections, makes one request on each, prints
/// `READY {"open":N}` and holds them idle until stdin closes.
pub fn idle_conns(a: IdleConnsArgs) -> BenchResult<()> {
    runtime()?.block_on(async move {
        let tls = connector()?;
        let mut held = Vec::with_capacity(a.n);
        let mut failed = 0usize;
        for _ in 0..a.n {
            match tls_connect(&tls, a.addr, &a.sni).await {
                Ok(mut s) => {
                    let mut carry = Vec::new();
                    match timed_get(&mut s, &a.sni, &a.path, &mut carry).await {
                        Ok(t) if t.status == 200 => held.push(s),
                        _ => failed += 1,
                    }
                }
                Err(_) => failed += 1,
            }
        }
        println!(
            "READY {}",
            serde_json::json!({"open": held.len(), "failed": failed})
        );
        std::io::stdout().flush().ctx(|| "stdout".into())?;
        // Hold until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
                line.clear();
            }
        })
        .await
        .map_err(|e| BenchError::Msg(e.to_string()))?;
        drop(held);
        Ok(())
    })
}

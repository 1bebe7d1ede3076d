//! Process accounting, statistics and small helpers shared by the benches.
use std::{
    fs,
    net::{SocketAddr, TcpListener},
    os::fd::{FromRawFd, IntoRawFd},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// The CPU the system under test (proxy, agent) is pinned to.
pub const SUBJECT_CPU: &str = "0";
/// The CPU the load generators and the mock upstream are pinned to.
pub const LOAD_CPU: &str = "1";

pub type BenchResult<T> = Result<T, BenchError>;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Msg(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub fn err<T>(msg: impl Into<String>) -> BenchResult<T> {
    Err(BenchError::Msg(msg.into()))
}

pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> BenchResult<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> BenchResult<T> {
        self.map_err(|source| BenchError::Io {
            what: what(),
            source,
        })
    }
}

/// Clock ticks per second for /proc/<pid>/stat times.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `pid` and all its descendants (threads' children included).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = fs::read_to_string(t.path().join("children")) {
                    out.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// User + system CPU seconds used so far by `pid` and its descendants.
pub fn cpu_seconds(pid: u32) -> f64 {
    process_tree(pid)
        .into_iter()
        .map(|p| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                return 0.0;
            };
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 (1-based) of the whole line.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (ticks(11) + ticks(12)) as f64 / clk_tck()
        })
        .sum()
}

/// Resident set size (KiB) of `pid` and its descendants.
pub fn rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .map(|p| status_field(p, "VmRSS:"))
        .sum()
}

fn status_field(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The process whose command line contains every one of `needles`.
pub fn find_pid(needles: &[&str]) -> Option<u32> {
    let me = std::process::id();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) {
            return Some(pid);
        }
    }
    None
}

/// Pins the calling thread to one CPU.
pub fn pin_this_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

pub fn loadavg() -> (f64, f64, f64) {
    let s = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    (
        v.first().copied().unwrap_or(0.0),
        v.get(1).copied().unwrap_or(0.0),
        v.get(2).copied().unwrap_or(0.0),
    )
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Waits until `ok()` or the timeout.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> BenchResult<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
pub struct Guarded {
    pub child: Child,
    pub name: String,
}

impl Guarded {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("egret-bench: {} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> BenchResult<TempDir> {
        let p = std::env::temp_dir().join(bpf_tests::unique(prefix));
        fs::create_dir_all(&p).ctx(|| format!("create {}", p.display()))?;
        Ok(TempDir(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("EGRET_BENCH_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// First line of a command's output (stdout, else stderr), for versions.
pub fn version_of(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                String::from_utf8_lossy(&o.stderr).into_owned()
            } else {
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            text.lines().next().unwrap_or("").trim().to_owned()
        }
        Err(_) => "not installed".to_owned(),
    }
}

/// Formats a number with at most `sig` significant digits, thousands kept whole.
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "—".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Raises the open-file limit to the hard limit (children inherit it).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A TCP listener (backlog 4096) accepting and closing connections on a
/// thread pinned to the subject CPU, until dropped.
pub struct Acceptor {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    pub fn start() -> BenchResult<Acceptor> {
        let l = TcpListener::bind("127.0.0.1:0").ctx(|| "bind acceptor".into())?;
        // std listens with a backlog of 128; a fast connect loop overflows it.
        let fd = l.into_raw_fd();
        // SAFETY: `fd` is the listening socket we own; listen(2) again only
        // changes its backlog.
        let l = unsafe {
            libc::listen(fd, 4096);
            TcpListener::from_raw_fd(fd)
        };
        let addr = l.local_addr().ctx(|| "acceptor addr".into())?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let cpu: usize = SUBJECT_CPU.parse().unwrap_or(0);
        let thread = std::thread::spawn(move || {
            pin_this_thread(cpu);
            for c in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                drop(c);
            }
        });
        Ok(Acceptor {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a `#!/bin/sh` wrapper that `exec`s `command` with the caller's
/// arguments (how the benches start the agent under taskset or valgrind
/// through `EGRET_BIN`), mode 0755.
pub fn write_exec_wrapper(path: &std::path::Path, command: &str) -> BenchResult<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\nexec {command} \"$@\"\n"))
        .ctx(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod {}", path.display()))
}

//! `egret-bench profile`: the agent's hot path under the proxy bench's
//! load, with callgrind (user-space instructions, exact and bounded: a fixed
//! number of requests) or perf sampling `cpu-clock` (user + kernel, for a
//! fixed time). Hardware counters are not available on this VM
//! (`perf stat -e instructions` says "not supported"), so callgrind is the
//! reference profile; perf's software clock adds the kernel's share.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use clap::{Args, ValueEnum};

use crate::{
    load::{self, Payload},
    peers::{self, hosts_file, Egret, Mock},
    util::{err, BenchResult, IoContext},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Tool {
    Callgrind,
    Perf,
}

#[derive(Args)]
pub struct ProfileArgs {
    #[arg(long, value_enum, default_value = "callgrind")]
    tool: Tool,
    /// Requests per protocol (callgrind: HTTP/1.1 then HTTP/2).
    #[arg(long, default_value_t = 3000)]
    requests: u64,
    /// Seconds of wrk load (perf).
    #[arg(long, default_value_t = 10)]
    secs: u32,
    /// perf: the load is `GET /sse/1000` (1,000 back-to-back SSE events
    /// per response, as the stream bench) instead of the chat completion.
    #[arg(long)]
    sse: bool,
    /// Where the profile and its reports go (default: <target>/release/profile).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn profile(a: ProfileArgs) -> BenchResult<()> {
    if std::env::var_os("EGRET_BIN").is_none() {
        std::env::set_var("EGRET_BIN", peers::exe_dir().join("egret"));
    }
    let egret_bin = PathBuf::from(std::env::var_os("EGRET_BIN").unwrap_or_default());
    let out = a.out.unwrap_or_else(|| peers::exe_dir().join("profile"));
    fs::create_dir_all(&out).ctx(|| format!("create {}", out.display()))?;
    let dir = crate::util::TempDir::new("egret-bench-profile-")?;
    let payload = Payload::write(dir.path())?;
    let mock = Mock::start(dir.path())?;
    let hosts = hosts_file(dir.path(), peers::MOCK_IP)?;
    match a.tool {
        Tool::Callgrind => {
            let data = out.join("callgrind.out");
            let _ = fs::remove_file(&data);
            let wrapper = dir.join("egret-callgrind.sh");
            crate::util::write_exec_wrapper(
                &wrapper,
                &format!(
                    "valgrind --tool=callgrind --callgrind-out-file={} {}",
                    data.display(),
                    egret_bin.display()
                ),
            )?;
            std::env::set_var("EGRET_BIN", &wrapper);
            let egret = Egret::start(&mock, "", None)?;
            std::env::set_var("EGRET_BIN", &egret_bin);
            for h1 in [true, false] {
                let r = load::h2load_count(
                    Some(&egret.sandbox),
                    &hosts,
                    &payload,
                    h1,
                    4,
                    if h1 { 1 } else { 10 },
                    a.requests,
                )?;
                eprintln!(
                    "profile: {} requests over {} at {:.0} req/s under callgrind",
                    r.requests,
                    if h1 { "HTTP/1.1" } else { "HTTP/2" },
                    r.rps
                );
            }
            drop(egret);
            if !data.exists() {
                return err(format!("{} not written", data.display()));
            }
            for (name, extra) in [
                ("exclusive", &[][..]),
                ("inclusive", &["--inclusive=yes"][..]),
            ] {
                let o = Command::new("callgrind_annotate")
                    .args(extra)
                    .arg(&data)
                    .output()
                    .ctx(|| "callgrind_annotate".into())?;
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let path = out.join(format!("callgrind-{name}.txt"));
                fs::write(&path, &text).ctx(|| "write report".into())?;
                println!("==> {} (top)", path.display());
                for l in text.lines().take(60) {
                    println!("{l}");
                }
            }
        }
        Tool::Perf => {
            let egret = Egret::start(&mock, "", None)?;
            let data = out.join("perf.data");
            let mut rec = Command::new("perf")
                .args(["record", "-e", "cpu-clock", "-F", "1999", "-g", "-o"])
                .arg(&data)
                .args(["-p", &egret.pid.to_string(), "--", "sleep"])
                .arg((a.secs + 1).to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ctx(|| "perf record".into())?;
            let r = if a.sse {
                load::wrk_get(Some(&egret.sandbox), &hosts, "/sse/1000", 4, a.secs)?
            } else {
                load::wrk(Some(&egret.sandbox), &hosts, &payload, 16, a.secs)?
            };
            eprintln!("profile: wrk {:.0} req/s under perf", r.rps);
            let _ = rec.wait();
            drop(egret);
            for (name, sort) in [("dso", "dso"), ("symbols", "dso,sym")] {
                let o = Command::new("perf")
                    .args(["report", "--stdio", "--no-children", "-g", "none", "-i"])
                    .arg(&data)
                    .args(["--sort", sort, "--percent-limit", "0.5"])
                    .output()
                    .ctx(|| "perf report".into())?;
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let path = out.join(format!("perf-{name}.txt"));
                fs::write(&path, &text).ctx(|| "write report".into())?;
                println!("==> {} (top)", path.display());
                for l in text.lines().filter(|l| !l.starts_with('#')).take(60) {
                    println!("{l}");
                }
            }
        }
    }
    Ok(())
}

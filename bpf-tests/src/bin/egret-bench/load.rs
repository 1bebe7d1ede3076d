//! Load generators: wrk (HTTP/1.1) and h2load (HTTP/2, and HTTP/1.1 at a
//! fixed rate for latency), with their output parsed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use bpf_tests::SandboxCgroup;

use crate::{
    peers::{client, HOST},
    util::{err, BenchResult, IoContext},
};

/// Output words per reply, chosen so the mock's chat completion is ~1 KiB.
pub const OUTPUT_WORDS: &str = "73";
pub const PATH: &str = "/v1/chat/completions";

/// The request: an OpenAI chat completion body of exactly 1024 bytes.
pub fn request_body() -> String {
    let make = |content: &str| {
        serde_json::json!({
            "model": "gpt-4o-mini",
            "max_tokens": 99,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": content},
            ],
        })
        .to_string()
    };
    let base = make("").len();
    let filler: String = "lorem ipsum dolor sit amet "
        .repeat(64)
        .chars()
        .take(1024usize.saturating_sub(base))
        .collect();
    make(&filler)
}

/// Files the load generators read: the body and wrk's Lua script.
pub struct Payload {
    pub body: PathBuf,
    pub lua: PathBuf,
}

impl Payload {
    pub fn write(dir: &Path) -> BenchResult<Payload> {
        let body = request_body();
        let body_path = dir.join("body.json");
        fs::write(&body_path, &body).ctx(|| "write body".into())?;
        let lua = format!(
            "wrk.method = \"POST\"\nwrk.body = [==[{body}]==]\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer sk-bench-not-a-key\"\n\
             wrk.headers[\"x-mock-output-tokens\"] = \"{OUTPUT_WORDS}\"\n"
        );
        let lua_path = dir.join("post.lua");
        fs::write(&lua_path, lua).ctx(|| "write lua".into())?;
        Ok(Payload {
            body: body_path,
            lua: lua_path,
        })
    }
}

pub fn url() -> String {
    format!("https://{HOST}{PATH}")
}

#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub rps: f64,
    pub requests: u64,
    pub errors: u64,
    /// Latency percentiles (ms) where the tool reports them.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn run(mut cmd: Command, what: &str) -> BenchResult<String> {
    let out = cmd.output().ctx(|| format!("run {what}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return err(format!(
            "{what} failed ({}): {}\n{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

fn wrk_duration_ms(v: &str) -> f64 {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().map_or(f64::NAN, |x| x * mult)
}

/// wrk, HTTP/1.1 keep-alive, `conns` connections on one thread.
pub fn wrk(
    sandbox: Option<&SandboxCgroup>,
    hosts: &Path,
    payload: &Payload,
    conns: u32,
    secs: u32,
) -> BenchResult<LoadResult> {
    let mut cmd = wrk_base(sandbox, hosts, conns, secs);
    cmd.arg("-s").arg(&payload.lua).arg(url());
    parse_wrk(&run(cmd, "wrk")?)
}

/// wrk `GET https://{HOST}{path}`, HTTP/1.1 keep-alive (the SSE profile).
pub fn wrk_get(
    sandbox: Option<&SandboxCgroup>,
    hosts: &Path,
    path: &str,
    conns: u32,
    secs: u32,
) -> BenchResult<LoadResult> {
    let mut cmd = wrk_base(sandbox, hosts, conns, secs);
    cmd.arg(format!("https://{HOST}{path}"));
    parse_wrk(&run(cmd, "wrk")?)
}

/// wrk on one thread, `conns` connections for `secs`, with latencies.
fn wrk_base(sandbox: Option<&SandboxCgroup>, hosts: &Path, conns: u32, secs: u32) -> Command {
    let mut cmd = client(sandbox, hosts, "wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    cmd
}

fn parse_wrk(text: &str) -> BenchResult<LoadResult> {
    let mut r = LoadResult::default();
    for line in text.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if t.contains("requests in") {
            r.requests = words.first().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if words.len() == 2 && words[0] == "50%" {
            r.p50_ms = wrk_duration_ms(words[1]);
        } else if words.len() == 2 && words[0] == "99%" {
            r.p99_ms = wrk_duration_ms(words[1]);
        }
    }
    if r.requests == 0 {
        return err(format!("wrk made no requests:\n{text}"));
    }
    Ok(r)
}

fn parse_h2load(text: &str) -> BenchResult<LoadResult> {
    let mut r = LoadResult {
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        ..LoadResult::default()
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in") {
            r.rps = rest
                .split(',')
                .nth(1)
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix("requests:") {
            let field = |name: &str| -> u64 {
                rest.split(',')
                    .find(|p| p.trim().ends_with(name))
                    .and_then(|p| p.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            r.requests = field("succeeded");
            r.errors += field("failed") + field("errored") + field("timeout");
        } else if let Some(rest) = t.strip_prefix("status codes:") {
            r.errors += rest
                .split(',')
                .filter(|p| !p.trim().ends_with("2xx"))
                .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if r.requests == 0 {
        return err(format!("h2load made no successful request:\n{text}"));
    }
    Ok(r)
}

fn h2load_base(sandbox: Option<&SandboxCgroup>, hosts: &Path, payload: &Payload) -> Command {
    let mut cmd = client(sandbox, hosts, "h2load");
    cmd.arg("-d")
        .arg(&payload.body)
        .args(["-H", "content-type: application/json"])
        .args(["-H", "authorization: Bearer sk-bench-not-a-key"])
        .args(["-H", &format!("x-mock-output-tokens: {OUTPUT_WORDS}")]);
    cmd
}

/// h2load, HTTP/2, `conns` connections × `streams` concurrent streams.
pub fn h2load(
    sandbox: Option<&SandboxCgroup>,
    hosts: &Path,
    payload: &Payload,
    conns: u32,
    streams: u32,
    secs: u32,
) -> BenchResult<LoadResult> {
    let mut cmd = h2load_base(sandbox, hosts, payload);
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-m{streams}"),
        &format!("-D{secs}"),
    ])
    .arg(url());
    parse_h2load(&run(cmd, "h2load")?)
}

/// h2load with a fixed total count of requests (pipeline bench, profiles).
pub fn h2load_count(
    sandbox: Option<&SandboxCgroup>,
    hosts: &Path,
    payload: &Payload,
    h1: bool,
    conns: u32,
    streams: u32,
    count: u64,
) -> BenchResult<LoadResult> {
    let mut cmd = h2load_base(sandbox, hosts, payload);
    if h1 {
        cmd.arg("--h1");
    }
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-m{streams}"),
        &format!("-n{count}"),
    ])
    .arg(url());
    parse_h2load(&run(cmd, "h2load")?)
}

/// A fixed-rate h2load run: `clients` × `rps_each` req/s, one stream each.
pub struct FixedRate {
    pub h1: bool,
    pub clients: u32,
    pub rps_each: u32,
    pub secs: u32,
}

/// h2load at a fixed rate, returning every request's duration in ms from
/// its per-request log.
pub fn h2load_latency(
    sandbox: Option<&SandboxCgroup>,
    hosts: &Path,
    payload: &Payload,
    rate: &FixedRate,
    log: &Path,
) -> BenchResult<(LoadResult, Vec<f64>)> {
    let _ = fs::remove_file(log);
    let mut cmd = h2load_base(sandbox, hosts, payload);
    if rate.h1 {
        cmd.arg("--h1");
    }
    cmd.args([
        "-t1",
        &format!("-c{}", rate.clients),
        "-m1",
        &format!("--rps={}", rate.rps_each),
        &format!("-D{}", rate.secs),
    ])
    .arg(format!("--log-file={}", log.display()))
    .arg(url());
    let r = parse_h2load(&run(cmd, "h2load --rps")?)?;
    let text = fs::read_to_string(log).ctx(|| "read h2load log".into())?;
    let samples: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let status: u32 = f.get(1)?.parse().ok()?;
            let us: f64 = f.get(2)?.parse().ok()?;
            (200..300).contains(&status).then_some(us / 1e3)
        })
        .collect();
    Ok((r, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_one_kib() {
        assert_eq!(request_body().len(), 1024);
    }
}

//! The `egret` binary: the CLI edge. Errors become one line on stderr and a
//! non-zero exit status, never a panic trace.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use egret::{
    api, app,
    attribution::{Attribution, SandboxSpec},
    cgroup::NodePaths,
    config::Config,
    doctor, records, sandbox,
};

#[derive(Parser)]
#[command(
    name = "egret",
    version,
    about = "Capture agent for AI-agent sandboxes"
)]
struct Cli {
    /// Configuration file (YAML). Without it the embedded default applies.
    #[arg(long, global = true, env = "EGRET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground.
    Run(RunArgs),
    /// Follow transactions (and flows) live as the running agent captures them.
    Tail(TailArgs),
    /// Run a command as a fresh sandbox registered with the running agent.
    Exec(ExecArgs),
    /// Show captured records.
    Records(RecordsArgs),
    /// Register, unregister and list sandboxes through the attribution API.
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Check kernel features, cgroup v2, BTF, privileges and the agent.
    Doctor,
    /// Validate or print configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The node CA that sandboxes trust.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Detach egret's kernel programs (remove their bpffs pins) and the empty
    /// sandbox root. `egret run` leaves them attached across restarts.
    Uninstall,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create the node CA (idempotent) and the sandbox trust bundle; print the CA path.
    Init,
}

#[derive(Args)]
struct AttributionArgs {
    /// Invocation id (generated when absent).
    #[arg(long)]
    invocation_id: Option<String>,
    #[arg(long, default_value = "")]
    agent_kind: String,
    #[arg(long, default_value = "")]
    agent_namespace: String,
    #[arg(long, default_value = "")]
    agent_name: String,
    #[arg(long, default_value = "")]
    agent_uid: String,
    #[arg(long, default_value = "")]
    agent_revision: String,
    /// W3C traceparent of the invocation; outbound requests extend that trace.
    #[arg(long)]
    traceparent: Option<String>,
    /// W3C tracestate sent with that traceparent.
    #[arg(long)]
    tracestate: Option<String>,
}

impl AttributionArgs {
    fn into_attribution(self) -> Attribution {
        Attribution {
            invocation_id: self
                .invocation_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            agent_kind: self.agent_kind,
            agent_namespace: self.agent_namespace,
            agent_name: self.agent_name,
            agent_uid: self.agent_uid,
            agent_revision: self.agent_revision,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
        }
    }
}

#[derive(Args)]
struct ExecArgs {
    #[command(flatten)]
    attribution: AttributionArgs,
    /// Give the sandbox its own network namespace (veth to the host).
    #[arg(long)]
    netns: bool,
    /// Run the workload as this user (`NAME`, `UID` or `UID:GID`).
    #[arg(long)]
    user: Option<String>,
    /// Keep every capability (raw sockets, firewall, mounts, cgroup moves):
    /// the workload can then bypass capture. For trusted tools only.
    #[arg(long)]
    privileged: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Also send every signal of every gateway to this OTLP/HTTP base URL
    /// (a local dev receiver), in addition to the per-gateway endpoints.
    #[arg(long)]
    dev_otlp_fallback_endpoint: Option<String>,
}

#[derive(Args)]
struct TailArgs {
    #[arg(long)]
    invocation_id: Option<String>,
    #[arg(long)]
    agent_name: Option<String>,
    /// Include flow records (default: transactions only).
    #[arg(long)]
    flows: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RecordsArgs {
    #[arg(long)]
    invocation_id: Option<String>,
    /// Only records that ended at or after this: a duration ago (`15m`,
    /// `2h`) or a time (`2026-12-03T10:00:00Z`).
    #[arg(long, value_parser = parse_time_bound)]
    since: Option<i64>,
    /// Only records that started before this: a duration ago or a time.
    #[arg(long, value_parser = parse_time_bound)]
    until: Option<i64>,
    #[arg(long)]
    agent_name: Option<String>,
    #[arg(long)]
    agent_namespace: Option<String>,
    /// `transaction` or `flow`.
    #[arg(long)]
    kind: Option<String>,
    /// The response model (else the request model), exactly.
    #[arg(long)]
    model: Option<String>,
    /// `gen_ai.provider.name`, exactly (`openai`, `azure.ai.openai`, …).
    #[arg(long)]
    provider: Option<String>,
    /// HTTP response status code.
    #[arg(long)]
    status: Option<i64>,
    /// `error.type`, exactly (`budget_exhausted`, `upstream_timeout`, …).
    #[arg(long)]
    error_type: Option<String>,
    /// Only the newest N records.
    #[arg(long)]
    limit: Option<usize>,
    /// table, json (one array) or ndjson (one object per line).
    #[arg(long, value_enum, default_value_t = records::Output::Table)]
    output: records::Output,
    /// Same as `--output ndjson`.
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// Keep printing records as they are written, until interrupted
    /// (json output is printed as ndjson).
    #[arg(long)]
    follow: bool,
}

/// `--since` / `--until`: a duration ago or an RFC 3339 time → Unix ns.
fn parse_time_bound(s: &str) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        let ago = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        return Ok(egret::record::now_unix_nanos().saturating_sub(ago));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is neither a duration (15m) nor a time (RFC 3339): {e}"))?;
    let ns = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?
        .as_nanos();
    i64::try_from(ns).map_err(|_| format!("{s:?} is too far ahead"))
}

#[derive(Args)]
struct RegisterArgs {
    id: String,
    /// cgroup, relative to the sandbox root.
    #[arg(long)]
    cgroup: String,
    /// Network namespace path (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    #[command(flatten)]
    attribution: AttributionArgs,
}

#[derive(Subcommand)]
enum SandboxCmd {
    /// Register (or re-register) a sandbox cgroup with an attribution.
    Register(Box<RegisterArgs>),
    Unregister {
        id: String,
    },
    List,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file without running.
    Check { file: PathBuf },
    /// Print the effective configuration's JSON Schema.
    Schema,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    })
}

async fn real_main(cli: Cli) -> Result<i32> {
    let cfg = load_config(cli.config.as_ref())?;
    match cli.command {
        Command::Run(args) => {
            app::run(
                cfg,
                app::RunOptions {
                    dev_otlp_fallback_endpoint: args.dev_otlp_fallback_endpoint,
                    config_path: cli.config.clone(),
                },
            )
            .await?;
            Ok(0)
        }
        Command::Tail(args) => {
            let mut q = Vec::new();
            if let Some(i) = &args.invocation_id {
                q.push(format!("invocation_id={i}"));
            }
            if let Some(a) = &args.agent_name {
                q.push(format!("agent_name={a}"));
            }
            if !args.flows {
                q.push("kind=transaction".to_owned());
            }
            let client = api::Client::new(&cfg.node.api_socket);
            let mut out = std::io::stdout();
            if !args.json {
                records::print_header(&mut out)?;
            }
            client
                .stream_records(&q.join("&"), |line| {
                    use std::io::Write;
                    let ok = if args.json {
                        writeln!(out, "{line}").is_ok()
                    } else {
                        match serde_json::from_str::<egret::record::Record>(line) {
                            Ok(r) => records::print_row(&mut out, &r).is_ok(),
                            Err(_) => true,
                        }
                    };
                    ok && out.flush().is_ok()
                })
                .await?;
            Ok(0)
        }
        Command::Exec(args) => {
            let paths =
                NodePaths::resolve(cfg.node.cgroup_mount.as_deref(), &cfg.node.sandbox_root)?;
            let bundle = cfg.node.trust_bundle_path();
            let code = sandbox::exec(sandbox::ExecOptions {
                sandbox_root: paths.sandbox_root,
                api_socket: cfg.node.api_socket.clone(),
                attribution: args.attribution.into_attribution(),
                netns: args.netns,
                trust_bundle: bundle.exists().then_some(bundle),
                user: args
                    .user
                    .as_deref()
                    .map(sandbox::RunAs::parse)
                    .transpose()?,
                privileged: args.privileged,
                command: args.command,
            })
            .await?;
            Ok(code)
        }
        Command::Records(args) => {
            let filter = egret::record::Filter {
                invocation_id: args.invocation_id,
                agent_name: args.agent_name,
                agent_namespace: args.agent_namespace,
                kind: args.kind,
                model: args.model,
                provider: args.provider,
                status: args.status,
                error_type: args.error_type,
                since_ns: args.since,
                until_ns: args.until,
            };
            let output = if args.json {
                records::Output::Ndjson
            } else {
                args.output
            };
            if args.follow {
                let stop = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                records::follow(&cfg, &filter, output, Duration::from_secs(1), stop).await?;
                return Ok(0);
            }
            let mut recs = records::load(&cfg, &filter).await?;
            records::keep_last(&mut recs, args.limit);
            records::print(&mut std::io::stdout().lock(), &recs, output)?;
            Ok(0)
        }
        Command::Sandbox(cmd) => {
            let client = api::Client::new(&cfg.node.api_socket);
            match cmd {
                SandboxCmd::Register(args) => {
                    let RegisterArgs {
                        id,
                        cgroup,
                        netns,
                        attribution,
                    } = *args;
                    let sb = client
                        .register(
                            &id,
                            &SandboxSpec {
                                cgroup,
                                netns,
                                attribution: attribution.into_attribution(),
                            },
                        )
                        .await?;
                    println!("{}", serde_json::to_string(&sb)?);
                }
                SandboxCmd::Unregister { id } => client.unregister(&id).await?,
                SandboxCmd::List => {
                    for sb in client.list().await? {
                        println!("{}", serde_json::to_string(&sb)?);
                    }
                }
            }
            Ok(0)
        }
        Command::Doctor => Ok(if doctor::run(&cfg).await { 0 } else { 1 }),
        Command::Config(ConfigCmd::Check { file }) => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(0)
        }
        Command::Uninstall => {
            if api::Client::new(&cfg.node.api_socket).list().await.is_ok() {
                anyhow::bail!("egret is running (its API answers); stop it first");
            }
            egret::bpf::clear_pins(&cfg.node.bpffs_dir);
            let _ = std::fs::remove_dir(&cfg.node.bpffs_dir);
            let paths =
                NodePaths::resolve(cfg.node.cgroup_mount.as_deref(), &cfg.node.sandbox_root)?;
            match std::fs::remove_dir(&paths.sandbox_root) {
                Ok(()) => println!("removed {}", paths.sandbox_root.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!(
                    "egret: kept {} ({e}); sandboxes may still live there",
                    paths.sandbox_root.display()
                ),
            }
            println!(
                "detached egret's programs ({})",
                cfg.node.bpffs_dir.display()
            );
            Ok(0)
        }
        Command::Ca(CaCmd::Init) => {
            let dir = cfg.node.ca_dir();
            let ca = egret::tls::Ca::init(&dir)?;
            egret::tls::write_trust_bundle(&ca, &cfg.node.trust_bundle_path())?;
            println!("{}", ca.cert_path().display());
            Ok(0)
        }
        Command::Config(ConfigCmd::Schema) => {
            let schema = schemars::schema_for!(Config);
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EGRET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egret: starting runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("egret: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, each cause once: most of the
/// crate's errors already name their source in their own message, so a
/// cause whose text the line already holds is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::other("Protocol not available");
        // A message that names its source, wrapped with context.
        let e = anyhow::Error::new(io).context("reading the cookie: Protocol not available");
        assert_eq!(
            error_chain(&e),
            "reading the cookie: Protocol not available"
        );
        let e = anyhow::anyhow!("disk full").context("writing the spool");
        assert_eq!(error_chain(&e), "writing the spool: disk full");
    }
}

//! A real ClickHouse cluster for tests: one ZooKeeper (Debian's
//! `zookeeper`, run with the system `java`) and `shards × replicas`
//! `clickhouse-server`s (see [`crate::clickhouse_rig`]), all on loopback
//! with free ports and temporary directories, everything killed (and the
//! directories removed) on drop.
//!
//! Every node's config names the cluster [`CLUSTER`] in `remote_servers`
//! (one `<shard>` per shard, `internal_replication` on: a `Distributed`
//! insert writes one replica and replication copies it), the ZooKeeper,
//! `distributed_ddl` (for `ON CLUSTER`), and the macros egret's
//! `ReplicatedReplacingMergeTree` tables use: `{shard}` (`1`, `2`, …) and
//! `{replica}` (`s1r1`, `s1r2`, …, unique per shard).
//!
//! ```no_run
//! let Some(c) = bpf_tests::clickhouse_cluster::ClickHouseCluster::start_or_skip("t", 2, 2) else {
//!     return;
//! };
//! let shard = c.node(1, 0).query("SELECT substitution FROM system.macros WHERE macro = 'shard'");
//! assert_eq!(shard.unwrap().trim(), "2");
//! ```
//!
//! Set `EGRET_ZOOKEEPER_JAR` to use another ZooKeeper jar. With `CI` set,
//! a missing jar, `java` or ClickHouse binary fails the test.
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::clickhouse_rig::{err, free_port, unique_temp_dir, ClickHouseRig, RigError};
use crate::patience;

/// The cluster's name in every node's `remote_servers`.
pub const CLUSTER: &str = "egret_test";

/// Debian's ZooKeeper jar (its dependencies are on its manifest class path).
const DEBIAN_ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// A standalone ZooKeeper server.
pub struct ZooKeeperRig {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl ZooKeeperRig {
    /// The ZooKeeper jar: `$EGRET_ZOOKEEPER_JAR`, else Debian's.
    pub fn find_jar() -> Option<PathBuf> {
        let jar = std::env::var_os("EGRET_ZOOKEEPER_JAR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEBIAN_ZOOKEEPER_JAR));
        jar.is_file().then_some(jar)
    }

    fn find_java() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = vec!["/usr/bin".into()];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.into_iter()
            .map(|d| d.join("java"))
            .find(|p| p.is_file())
    }

    /// Starts ZooKeeper on a free loopback port and waits until it serves
    /// (`srvr` reports its mode: `ruok` answers `imok` before the server
    /// accepts sessions, and ClickHouse 18.16 can crash on a ZooKeeper
    /// session that failed at its start).
    pub fn start() -> Result<ZooKeeperRig, RigError> {
        let jar = Self::find_jar().ok_or_else(|| err("ZooKeeper jar not found"))?;
        let java = Self::find_java().ok_or_else(|| err("java not found"))?;
        let dir = unique_temp_dir()?;
        let port = free_port()?;
        let d = dir.display();
        fs::create_dir_all(dir.join("data"))
            .and_then(|()| {
                fs::write(
                    dir.join("zoo.cfg"),
                    format!(
                        "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={d}/data\n\
                         clientPort={port}\nclientPortAddress=127.0.0.1\nmaxClientCnxns=0\n\
                         admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr\n"
                    ),
                )
            })
            .map_err(|e| err(format!("write ZooKeeper config in {d}: {e}")))?;
        let out = fs::File::create(dir.join("zookeeper.out"))
            .map_err(|e| err(format!("create zookeeper.out: {e}")))?;
        let out2 = out
            .try_clone()
            .map_err(|e| err(format!("dup zookeeper.out: {e}")))?;
        let child = Command::new(java)
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-cp"])
            .arg(&jar)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(dir.join("zoo.cfg"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(out2)
            .spawn()
            .map_err(|e| err(format!("spawn java (ZooKeeper): {e}")))?;
        let mut zk = ZooKeeperRig {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + patience(Duration::from_secs(60));
        loop {
            if let Some(Ok(Some(status))) = zk.child.as_mut().map(Child::try_wait) {
                zk.child = None;
                return Err(err(format!(
                    "ZooKeeper exited with {status} during startup:\n{}",
                    fs::read_to_string(zk.dir.join("zookeeper.out")).unwrap_or_default()
                )));
            }
            if zk
                .four_letter("srvr")
                .is_ok_and(|a| a.contains("Mode: standalone"))
            {
                return Ok(zk);
            }
            if Instant::now() > deadline {
                return Err(err("ZooKeeper not serving within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn four_letter(&self, cmd: &str) -> std::io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(cmd.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for ZooKeeperRig {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("EGRET_KEEP_CLICKHOUSE_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `shards × replicas` ClickHouse servers and their ZooKeeper.
pub struct ClickHouseCluster {
    // Dropped in this order: the servers, then ZooKeeper.
    nodes: Vec<ClickHouseRig>,
    _zk: ZooKeeperRig,
    shards: usize,
    replicas: usize,
}

impl ClickHouseCluster {
    /// Starts a cluster, or returns `None` after printing why the calling
    /// test is skipped (something missing, `CI` unset). Panics if `CI` is
    /// set and something is missing, or if the cluster fails to start.
    pub fn start_or_skip(test: &str, shards: usize, replicas: usize) -> Option<ClickHouseCluster> {
        let missing = if ClickHouseRig::find_binary().is_none() {
            Some("clickhouse-server not found (apt-get install clickhouse-server)")
        } else if ZooKeeperRig::find_jar().is_none() {
            Some("ZooKeeper not found (apt-get install zookeeper, or set EGRET_ZOOKEEPER_JAR)")
        } else if ZooKeeperRig::find_java().is_none() {
            Some("java not found (apt-get install zookeeper pulls it in)")
        } else {
            None
        };
        if let Some(why) = missing {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}; CI is set, so this is a failure, not a skip");
            }
            eprintln!("SKIP {test}: {why}");
            return None;
        }
        match Self::start(shards, replicas) {
            Ok(c) => Some(c),
            Err(e) => panic!("{test}: cannot start the ClickHouse cluster: {e}"),
        }
    }

    /// Starts ZooKeeper and the servers (in parallel) and waits until every
    /// server answers, sees ZooKeeper and knows the cluster. Ports taken by
    /// another process between choosing and binding: tries new ones.
    pub fn start(shards: usize, replicas: usize) -> Result<ClickHouseCluster, RigError> {
        assert!(shards > 0 && replicas > 0);
        let mut attempts = 1;
        loop {
            match Self::start_once(shards, replicas) {
                Err(e) if attempts < 4 && e.to_string().contains("Address already in use") => {
                    attempts += 1;
                }
                r => return r,
            }
        }
    }

    fn start_once(shards: usize, replicas: usize) -> Result<ClickHouseCluster, RigError> {
        let zk = ZooKeeperRig::start()?;
        let n = shards * replicas;
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let mut remote = String::new();
        for s in 0..shards {
            remote.push_str(
                "      <shard>\n        <internal_replication>true</internal_replication>\n",
            );
            for r in 0..replicas {
                let tcp = ports[s * replicas + r].1;
                remote.push_str(&format!(
                    "        <replica><host>127.0.0.1</host><port>{tcp}</port></replica>\n"
                ));
            }
            remote.push_str("      </shard>\n");
        }
        let mut nodes = Vec::with_capacity(n);
        for s in 0..shards {
            for r in 0..replicas {
                let (http, tcp, inter) = ports[s * replicas + r];
                let extra = format!(
                    "  <remote_servers>\n    <{CLUSTER}>\n{remote}    </{CLUSTER}>\n  </remote_servers>\n  \
                     <zookeeper>\n    <node><host>127.0.0.1</host><port>{zk}</port></node>\n    \
                     <session_timeout_ms>6000</session_timeout_ms>\n  </zookeeper>\n  \
                     <macros><shard>{shard}</shard><replica>s{shard}r{replica}</replica></macros>\n  \
                     <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>",
                    zk = zk.port(),
                    shard = s + 1,
                    replica = r + 1,
                );
                nodes.push(ClickHouseRig::prepare(http, tcp, inter, extra)?);
            }
        }
        let mut cluster = ClickHouseCluster {
            nodes,
            _zk: zk,
            shards,
            replicas,
        };
        for node in &mut cluster.nodes {
            node.spawn()?;
        }
        for node in &mut cluster.nodes {
            node.wait_ready(patience(Duration::from_secs(90)))?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    /// Waits until every running server reaches ZooKeeper and lists the
    /// whole cluster.
    pub fn wait_healthy(&self) -> Result<(), RigError> {
        let want = (self.shards * self.replicas) as u64;
        let deadline = Instant::now() + patience(Duration::from_secs(60));
        for node in &self.nodes {
            loop {
                let hosts = node.query_u64(&format!(
                    "SELECT count() FROM system.clusters WHERE cluster = '{CLUSTER}'"
                ));
                let zk = node.query_u64("SELECT count() FROM system.zookeeper WHERE path = '/'");
                match (hosts, zk) {
                    (Ok(h), Ok(z)) if h == want && z > 0 => break,
                    (h, z) if Instant::now() > deadline => {
                        return Err(err(format!(
                            "node on {} not healthy: cluster hosts {h:?}, zookeeper {z:?}\n{}",
                            node.url(),
                            node.log_tail()
                        )))
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        CLUSTER
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The server of `shard`'s `replica` (both from 0).
    pub fn node(&self, shard: usize, replica: usize) -> &ClickHouseRig {
        &self.nodes[shard * self.replicas + replica]
    }

    pub fn node_mut(&mut self, shard: usize, replica: usize) -> &mut ClickHouseRig {
        &mut self.nodes[shard * self.replicas + replica]
    }

    pub fn nodes(&self) -> &[ClickHouseRig] {
        &self.nodes
    }

    /// SIGKILLs `shard`'s `replica` (a crash; data on disk kept).
    pub fn kill(&mut self, shard: usize, replica: usize) {
        self.node_mut(shard, replica).kill();
    }

    /// Stops every replica of `shard` (SIGTERM, in parallel, then waits).
    pub fn stop_shard(&mut self, shard: usize) {
        for r in 0..self.replicas {
            self.node_mut(shard, r).terminate();
        }
        for r in 0..self.replicas {
            self.node_mut(shard, r).stop();
        }
    }

    /// Starts every stopped replica of `shard` again (in parallel) and
    /// waits until they answer.
    pub fn start_shard(&mut self, shard: usize) -> Result<(), RigError> {
        for r in 0..self.replicas {
            self.node_mut(shard, r).spawn()?;
        }
        for r in 0..self.replicas {
            self.node_mut(shard, r)
                .wait_ready(patience(Duration::from_secs(90)))?;
        }
        Ok(())
    }
}

impl Drop for ClickHouseCluster {
    fn drop(&mut self) {
        // SIGTERM everything first; each node's own drop then waits for it
        // (and SIGKILLs what is still running after 20 s).
        for node in &mut self.nodes {
            node.terminate();
        }
    }
}

//! The attribution registry: sandbox → (slot, generation) → attribution.
//!
//! The kernel tags each socket with the (slot, generation) its cgroup had at
//! `connect()`. Re-registering a sandbox bumps the generation, so sockets
//! opened earlier keep resolving to the attribution they were opened under.
//! Past generations are kept (bounded) and the registry is persisted in the
//! state dir, so a restarted agent still resolves sockets from before.
//!
//! A (slot, generation) is never handed out twice: every change is on disk
//! (fsync'd, atomic rename) before the kernel sees the pair, slots are never
//! reused, and at start [`Registry::restore`] learns the pairs the pinned
//! kernel maps still hold and allocates above them, so a file that lost its
//! last writes cannot give an open socket's pair to another sandbox. A
//! corrupt or unreadable file stops the agent instead of starting empty.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use egret_common::AttrRef;
use serde::{Deserialize, Serialize};

use crate::{record::Record, semconv as sc};

/// How many past generations are remembered for resolving old sockets.
const HISTORY_LIMIT: usize = 65_536;

/// Who is behind a socket. Field names match the API's JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    pub invocation_id: String,
    #[serde(default)]
    pub agent_kind: String,
    #[serde(default)]
    pub agent_namespace: String,
    #[serde(default)]
    pub agent_name: String,
    #[serde(default)]
    pub agent_uid: String,
    #[serde(default)]
    pub agent_revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Attribution {
    /// Writes the attribution attributes into a record.
    pub fn apply(&self, rec: &mut Record) {
        rec.set(sc::INVOCATION_ID, self.invocation_id.as_str());
        for (k, v) in [
            (sc::AGENT_KIND, &self.agent_kind),
            (sc::AGENT_NAMESPACE, &self.agent_namespace),
            (sc::AGENT_NAME, &self.agent_name),
            (sc::AGENT_UID, &self.agent_uid),
            (sc::AGENT_REVISION, &self.agent_revision),
        ] {
            if !v.is_empty() {
                rec.set(k, v.as_str());
            }
        }
    }
}

/// Where an invocation's calls hang in a trace: the invocation's own span
/// (`invoke_agent {agent.name}`) and what it continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRoot {
    /// 32 hex digits: the registered traceparent's trace, else derived
    /// from the invocation id (so every call of the invocation, on every
    /// node and across restarts, is in one trace).
    pub trace_id: String,
    /// 16 hex digits: the invocation span, derived from the invocation id;
    /// the parent of every call the invocation makes.
    pub span_id: String,
    /// The registered traceparent's span (the orchestrator's), if any: the
    /// invocation span's parent.
    pub parent_span_id: Option<String>,
    /// Trace flags (2 hex digits) of the registered traceparent, else `01`.
    pub flags: String,
}

/// A W3C `traceparent` (version 00 layout) split into trace id, parent
/// span id and flags, lowercase; `None` when malformed or all-zero.
pub fn parse_traceparent(tp: &str) -> Option<(String, String, String)> {
    let p: Vec<&str> = tp.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (p.len() >= 4
        && hex(p[1], 32)
        && hex(p[2], 16)
        && hex(p[3], 2)
        && p[1].bytes().any(|b| b != b'0')
        && p[2].bytes().any(|b| b != b'0'))
    .then(|| {
        (
            p[1].to_ascii_lowercase(),
            p[2].to_ascii_lowercase(),
            p[3].to_ascii_lowercase(),
        )
    })
}

/// Hex of the first `n` bytes of SHA-256(`domain` NUL `seed`).
fn derived_hex(domain: &str, seed: &str, n: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(seed.as_bytes());
    crate::record::hex(&h.finalize()[..n])
}

/// `gen_ai.operation.name` of an invocation record (the GenAI
/// conventions' agent invocation operation).
pub const OPERATION_INVOKE_AGENT: &str = "invoke_agent";

/// The span id of an invocation's `invoke_agent` span (16 hex digits).
pub fn invocation_span_id(invocation_id: &str) -> String {
    derived_hex("egret.invocation.span", invocation_id, 8)
}

impl Attribution {
    /// The invocation's place in a trace: a registered traceparent wins
    /// (its trace, its span as the invocation span's parent); without one
    /// the trace id is derived from the invocation id. The invocation span
    /// id is always derived from the invocation id.
    pub fn trace_root(&self) -> TraceRoot {
        let span_id = invocation_span_id(&self.invocation_id);
        match self.traceparent.as_deref().and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => TraceRoot {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                flags,
            },
            None => TraceRoot {
                trace_id: derived_hex("egret.invocation.trace", &self.invocation_id, 16),
                span_id,
                parent_span_id: None,
                flags: "01".to_owned(),
            },
        }
    }
}

/// Body of `PUT /v1/sandboxes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// cgroup path: relative to the sandbox root, or absolute under it.
    pub cgroup: String,
    /// Path of the sandbox's network namespace (e.g. /run/netns/NAME), if own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    pub attribution: Attribution,
}

/// A registered sandbox as the API lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    pub slot: u32,
    pub generation: u32,
    pub attribution: Attribution,
    /// When this registration was made (Unix ns; 0 in registries written
    /// before egret recorded it).
    #[serde(default)]
    pub registered_unix_nano: i64,
}

impl Unregistered {
    /// The invocation's record (kind `invocation`, the `invoke_agent`
    /// span) when this unregistration ended it, ending at `end_unix_nano`.
    pub fn invocation_record(&self, end_unix_nano: i64) -> Option<Record> {
        let start = self.invocation_ended?;
        let a = &self.sandbox.attribution;
        let root = a.trace_root();
        let mut rec = Record::new(sc::KIND_INVOCATION);
        a.apply(&mut rec);
        rec.set(sc::GEN_AI_OPERATION_NAME, OPERATION_INVOKE_AGENT);
        rec.set(sc::SANDBOX_ID, self.sandbox.id.as_str());
        rec.set(sc::TRACE_ID, root.trace_id);
        rec.set(sc::SPAN_ID, root.span_id);
        rec.set_opt(sc::PARENT_SPAN_ID, root.parent_span_id);
        if start > 0 {
            rec.set(sc::START_TIME, start);
            rec.set(
                sc::DURATION_MS,
                end_unix_nano.saturating_sub(start).max(0) as f64 / 1e6,
            );
        }
        rec.set(sc::END_TIME, end_unix_nano);
        Some(rec)
    }
}

/// What an unregistration ended.
#[derive(Debug, Clone)]
pub struct Unregistered {
    pub sandbox: Sandbox,
    /// When no other registered sandbox carries the invocation: the
    /// invocation is over; this is when its first registration was made.
    pub invocation_ended: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("sandbox id must be 1-128 characters of [A-Za-z0-9._-]")]
    BadId,
    #[error("cgroup {0} is not under the sandbox root")]
    OutsideRoot(String),
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invocation_id must not be empty")]
    NoInvocation,
    #[error("sandbox {0} is not registered")]
    NotFound(String),
    #[error("persisting registry: {0}")]
    Persist(#[from] crate::statefile::StateFileError),
    #[error("kernel map: {0}")]
    Kernel(#[source] crate::bpf::BpfError),
    #[error("reading the kernel's attributions: {0}")]
    KernelHeld(#[source] crate::bpf::BpfError),
    #[error(
        "attribution registry {path} cannot be read ({source}); the agent does not start \
         without it. Make it a regular file readable by root, or move it aside \
         (`mv {path} {path}.unreadable`) and start the agent again: it then starts with an \
         empty registry, never reuses a (slot, generation) the kernel still holds, and \
         running sandboxes must be registered again"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "attribution registry {path} is corrupt ({source}); the agent does not start with it, \
         since sockets still open may carry (slot, generation) pairs it recorded. Move it aside \
         (`mv {path} {path}.corrupt`) and start the agent again: it then starts with an empty \
         registry, never reuses a (slot, generation) the kernel still holds, and running \
         sandboxes must be registered again"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// The highest slot ever handed out: slots are never reused.
    next_slot: u32,
    sandboxes: BTreeMap<String, Sandbox>,
    /// (slot, generation) → attribution, oldest first.
    history: VecDeque<(u32, u32, Attribution)>,
    /// Invocation id → when its first live registration was made (Unix
    /// ns); removed when its last sandbox is unregistered.
    #[serde(default)]
    invocations: BTreeMap<String, i64>,
}

/// What the registry needs from the kernel half (kept abstract so the
/// registry logic is testable without BPF).
pub trait AttrMap: Send + Sync {
    fn set(&self, cgroup_id: u64, attr: AttrRef) -> Result<(), crate::bpf::BpfError>;
    fn clear(&self, cgroup_id: u64);
    /// The pair a sandbox cgroup currently has, if any.
    fn get(&self, cgroup_id: u64) -> Option<AttrRef>;
    /// Every pair the kernel may still hold: the sandbox cgroups' current
    /// pairs and the tags of attributed sockets still open (the maps are
    /// pinned, so they outlive the agent).
    fn held(&self) -> Result<Vec<AttrRef>, RegistryError>;
}

impl AttrMap for crate::bpf::KernelMaps {
    fn set(&self, cgroup_id: u64, attr: AttrRef) -> Result<(), crate::bpf::BpfError> {
        self.set_attribution(cgroup_id, attr)
    }
    fn clear(&self, cgroup_id: u64) {
        self.clear_attribution(cgroup_id)
    }
    fn get(&self, cgroup_id: u64) -> Option<AttrRef> {
        self.attribution_of(cgroup_id)
    }
    fn held(&self) -> Result<Vec<AttrRef>, RegistryError> {
        self.held_attributions().map_err(RegistryError::KernelHeld)
    }
}

type HistoryIndex = HashMap<(u32, u32), Attribution>;

struct Inner {
    /// What is persisted.
    state: State,
    /// `state.history` by (slot, generation).
    index: HistoryIndex,
    /// slot → the highest generation the kernel held at start. A registry
    /// that lost its last writes (power loss before they reached the disk,
    /// a restored backup) may be behind the pinned kernel maps; the next
    /// generation of a slot is above both.
    kernel_high: HashMap<u32, u32>,
}

pub struct Registry {
    root: PathBuf,
    file: PathBuf,
    state: Mutex<Inner>,
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Registry {
    /// Opens the registry persisted at `file` (missing: empty); `root` is
    /// the absolute sandbox root cgroup directory. An unreadable or corrupt
    /// file is an error: starting empty would hand out (slot, generation)
    /// pairs that sockets still open carry. Call [`Registry::restore`]
    /// before registering anything.
    pub fn open(root: PathBuf, file: PathBuf) -> Result<Registry, RegistryError> {
        let mut state: State = match std::fs::read(&file) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| RegistryError::Corrupt {
                    path: file.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(RegistryError::Unreadable {
                    path: file.clone(),
                    source,
                })
            }
        };
        crate::statefile::restrict_file(&file)?;
        // Files from older versions: the high-water mark is at least every
        // slot they name.
        let highest = state
            .history
            .iter()
            .map(|(s, _, _)| *s)
            .chain(state.sandboxes.values().map(|sb| sb.slot))
            .max()
            .unwrap_or(0);
        state.next_slot = state.next_slot.max(highest);
        let index = state
            .history
            .iter()
            .map(|(s, g, a)| ((*s, *g), a.clone()))
            .collect();
        Ok(Registry {
            root,
            file,
            state: Mutex::new(Inner {
                state,
                index,
                kernel_high: HashMap::new(),
            }),
        })
    }

    /// After (re)start: learns every (slot, generation) the pinned kernel
    /// maps still hold, so none is handed out again, and re-writes the
    /// kernel's map from the persisted sandboxes.
    pub fn restore(&self, kernel: &dyn AttrMap) -> Result<(), RegistryError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let held = kernel.held()?;
        let before = inner.state.next_slot;
        for a in &held {
            inner.state.next_slot = inner.state.next_slot.max(a.slot);
            let high = inner.kernel_high.entry(a.slot).or_insert(0);
            *high = (*high).max(a.generation);
        }
        if inner.state.next_slot != before {
            tracing::warn!(
                file = %self.file.display(),
                persisted = before,
                kernel = inner.state.next_slot,
                "the attribution registry is behind the kernel (it lost writes): \
                 slots up to the kernel's are not handed out again"
            );
            self.persist(&inner.state)?;
        }
        for sb in inner.state.sandboxes.values() {
            let attr = AttrRef {
                slot: sb.slot,
                generation: sb.generation,
            };
            match kernel.get(sb.cgroup_id) {
                Some(k) if k != attr && k.slot == sb.slot && k.generation > sb.generation => {
                    // The registration behind the kernel's pair was lost:
                    // keep the kernel's pair (unknown, so unattributed)
                    // rather than attribute new sockets to an older
                    // invocation.
                    tracing::warn!(
                        sandbox = %sb.id,
                        generation = sb.generation,
                        kernel_generation = k.generation,
                        "registration lost by the registry; register the sandbox again"
                    );
                }
                _ => {
                    if let Err(e) = kernel.set(sb.cgroup_id, attr) {
                        tracing::warn!(sandbox = %sb.id, "restoring attribution: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    fn resolve_cgroup(&self, cgroup: &str) -> Result<PathBuf, RegistryError> {
        let p = Path::new(cgroup);
        let full = if p.is_absolute() {
            p.to_owned()
        } else {
            self.root.join(p)
        };
        let canon = full
            .canonicalize()
            .map_err(|source| RegistryError::Cgroup {
                path: full.clone(),
                source,
            })?;
        // Sandboxes are direct children of the root: that is the level the
        // kernel programs attribute at.
        if canon.parent() != Some(self.root.as_path()) {
            return Err(RegistryError::OutsideRoot(cgroup.to_owned()));
        }
        Ok(canon)
    }

    /// Registers (or re-registers) sandbox `id`. When a re-registration
    /// replaces the last sandbox of another invocation, that invocation
    /// ended: it is returned beside the new registration.
    pub fn register(
        &self,
        id: &str,
        spec: SandboxSpec,
        kernel: &dyn AttrMap,
    ) -> Result<(Sandbox, Option<Unregistered>), RegistryError> {
        if !valid_id(id) {
            return Err(RegistryError::BadId);
        }
        if spec.attribution.invocation_id.is_empty() {
            return Err(RegistryError::NoInvocation);
        }
        let cgroup = self.resolve_cgroup(&spec.cgroup)?;
        let cgroup_id = std::fs::metadata(&cgroup)
            .map_err(|source| RegistryError::Cgroup {
                path: cgroup.clone(),
                source,
            })?
            .ino();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            state,
            index,
            kernel_high,
        } = &mut *guard;
        let old = state.sandboxes.get(id).cloned();
        let (slot, generation) = match state.sandboxes.get(id) {
            Some(old) => {
                if old.cgroup_id != cgroup_id {
                    kernel.clear(old.cgroup_id);
                }
                let last = old
                    .generation
                    .max(kernel_high.get(&old.slot).copied().unwrap_or(0));
                (old.slot, last.wrapping_add(1).max(1))
            }
            None => {
                state.next_slot = state.next_slot.wrapping_add(1).max(1);
                (state.next_slot, 1)
            }
        };
        let now = crate::record::now_unix_nanos();
        let sb = Sandbox {
            id: id.to_owned(),
            cgroup,
            cgroup_id,
            netns: spec.netns,
            slot,
            generation,
            attribution: spec.attribution,
            registered_unix_nano: now,
        };
        state
            .invocations
            .entry(sb.attribution.invocation_id.clone())
            .or_insert(now);
        state
            .history
            .push_back((slot, generation, sb.attribution.clone()));
        index.insert((slot, generation), sb.attribution.clone());
        while state.history.len() > HISTORY_LIMIT {
            if let Some((s, g, _)) = state.history.pop_front() {
                index.remove(&(s, g));
            }
        }
        state.sandboxes.insert(id.to_owned(), sb.clone());
        let replaced = old
            .filter(|o| o.attribution.invocation_id != sb.attribution.invocation_id)
            .map(|o| {
                let invocation_ended = Self::end_if_last(state, &o);
                Unregistered {
                    sandbox: o,
                    invocation_ended,
                }
            });
        self.persist(state)?;
        // Kernel last: once sockets get the new tag, it resolves.
        kernel
            .set(cgroup_id, AttrRef { slot, generation })
            .map_err(RegistryError::Kernel)?;
        Ok((sb, replaced))
    }

    /// When no registered sandbox carries `gone`'s invocation any more:
    /// forgets it and returns when it started.
    fn end_if_last(state: &mut State, gone: &Sandbox) -> Option<i64> {
        let inv = &gone.attribution.invocation_id;
        if state
            .sandboxes
            .values()
            .any(|o| o.attribution.invocation_id == *inv)
        {
            return None;
        }
        Some(
            state
                .invocations
                .remove(inv)
                .unwrap_or(gone.registered_unix_nano),
        )
    }

    pub fn unregister(
        &self,
        id: &str,
        kernel: &dyn AttrMap,
    ) -> Result<Unregistered, RegistryError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut guard.state;
        let sb = state
            .sandboxes
            .remove(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        kernel.clear(sb.cgroup_id);
        let invocation_ended = Self::end_if_last(state, &sb);
        self.persist(state)?;
        Ok(Unregistered {
            sandbox: sb,
            invocation_ended,
        })
    }

    pub fn list(&self) -> Vec<Sandbox> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.state.sandboxes.values().cloned().collect()
    }

    /// The attribution a socket tagged with `attr` was opened under.
    pub fn resolve(&self, attr: AttrRef) -> Option<Attribution> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.index.get(&(attr.slot, attr.generation)).cloned()
    }

    /// The sandbox currently holding `slot`, if any.
    pub fn sandbox_by_slot(&self, slot: u32) -> Option<Sandbox> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .state
            .sandboxes
            .values()
            .find(|s| s.slot == slot)
            .cloned()
    }

    /// Durably replaces the file (fsync'd, atomic rename, fsync'd
    /// directory, 0600) before the kernel sees a new pair.
    fn persist(&self, state: &State) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(state).map_err(|e| {
            RegistryError::Persist(crate::statefile::StateFileError {
                op: "encode",
                path: self.file.clone(),
                source: e.into(),
            })
        })?;
        crate::statefile::write_durable(&self.file, &bytes)?;
        Ok(())
    }
}

impl crate::admin::Report for Registry {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        m.gauge(
            "egret_sandboxes",
            "Registered sandboxes",
            &[(vec![], self.list().len() as i64)],
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        s.insert("sandboxes".into(), self.list().len().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel half: cgroup → current pair, plus the pairs of sockets
    /// still open (tags).
    #[derive(Default)]
    struct FakeMap {
        attr: Mutex<HashMap<u64, AttrRef>>,
        tags: Mutex<Vec<AttrRef>>,
    }
    impl FakeMap {
        /// A socket opened now in `cgroup_id` keeps its pair.
        fn connect(&self, cgroup_id: u64) -> AttrRef {
            let a = self.attr.lock().unwrap()[&cgroup_id];
            self.tags.lock().unwrap().push(a);
            a
        }
    }
    impl AttrMap for FakeMap {
        fn set(&self, cgroup_id: u64, attr: AttrRef) -> Result<(), crate::bpf::BpfError> {
            self.attr.lock().unwrap().insert(cgroup_id, attr);
            Ok(())
        }
        fn clear(&self, cgroup_id: u64) {
            self.attr.lock().unwrap().remove(&cgroup_id);
        }
        fn get(&self, cgroup_id: u64) -> Option<AttrRef> {
            self.attr.lock().unwrap().get(&cgroup_id).copied()
        }
        fn held(&self) -> Result<Vec<AttrRef>, RegistryError> {
            let mut v: Vec<AttrRef> = self.attr.lock().unwrap().values().copied().collect();
            v.extend(self.tags.lock().unwrap().iter().copied());
            Ok(v)
        }
    }

    fn spec(cg: &str, inv: &str) -> SandboxSpec {
        SandboxSpec {
            cgroup: cg.into(),
            netns: None,
            attribution: Attribution {
                invocation_id: inv.into(),
                ..Default::default()
            },
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        file: PathBuf,
    }

    fn fixture(sandboxes: &[&str]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        for sb in sandboxes {
            std::fs::create_dir_all(root.join(sb)).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let file = tmp.path().join("registry.json");
        Fixture {
            _tmp: tmp,
            root,
            file,
        }
    }

    fn cgroup_id(f: &Fixture, sb: &str) -> u64 {
        std::fs::metadata(f.root.join(sb)).unwrap().ino()
    }

    #[test]
    fn reregistration_keeps_old_generation_resolvable_and_survives_reopen() {
        let f = fixture(&["sb1"]);
        let map = FakeMap::default();
        let reg = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        reg.restore(&map).unwrap();
        let a = reg.register("sb1", spec("sb1", "inv-a"), &map).unwrap().0;
        let b = reg.register("sb1", spec("sb1", "inv-b"), &map).unwrap().0;
        assert_eq!(a.slot, b.slot);
        assert_ne!(a.generation, b.generation);
        let old = AttrRef {
            slot: a.slot,
            generation: a.generation,
        };
        assert_eq!(reg.resolve(old).unwrap().invocation_id, "inv-a");
        let reopened = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        assert_eq!(reopened.resolve(old).unwrap().invocation_id, "inv-a");
        assert!(matches!(
            reg.register("x", spec("../../etc", "i"), &map),
            Err(RegistryError::OutsideRoot(_)) | Err(RegistryError::Cgroup { .. })
        ));
    }

    /// An invocation ends when its last sandbox is unregistered, or
    /// re-registered for another invocation; its record spans from its
    /// first registration and carries the invocation span's ids.
    #[test]
    fn invocation_ends_with_its_last_sandbox() {
        let f = fixture(&["sb1", "sb2", "sb3"]);
        let map = FakeMap::default();
        let reg = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        reg.restore(&map).unwrap();
        let (first, none) = reg.register("sb1", spec("sb1", "inv-a"), &map).unwrap();
        assert!(none.is_none());
        reg.register("sb2", spec("sb2", "inv-a"), &map).unwrap();
        let un = reg.unregister("sb1", &map).unwrap();
        assert_eq!(un.invocation_ended, None, "sb2 still runs inv-a");
        assert!(un.invocation_record(1).is_none());
        // Survives a restart of the agent (the registry file).
        let reg = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        reg.restore(&map).unwrap();
        let un = reg.unregister("sb2", &map).unwrap();
        assert_eq!(un.invocation_ended, Some(first.registered_unix_nano));
        let end = first.registered_unix_nano + 2_000_000;
        let rec = un.invocation_record(end).unwrap();
        assert_eq!(rec.kind(), sc::KIND_INVOCATION);
        assert_eq!(rec.invocation_id(), Some("inv-a"));
        assert_eq!(rec.get_str(sc::GEN_AI_OPERATION_NAME), Some("invoke_agent"));
        assert_eq!(
            rec.get_i64(sc::START_TIME),
            Some(first.registered_unix_nano)
        );
        assert_eq!(rec.get_i64(sc::END_TIME), Some(end));
        let root = first.attribution.trace_root();
        assert_eq!(rec.get_str(sc::TRACE_ID), Some(root.trace_id.as_str()));
        assert_eq!(rec.get_str(sc::SPAN_ID), Some(root.span_id.as_str()));
        assert!(rec.get(sc::PARENT_SPAN_ID).is_none());
        // Re-registering a sandbox for another invocation ends the old one.
        reg.register("sb3", spec("sb3", "inv-x"), &map).unwrap();
        let (_, replaced) = reg.register("sb3", spec("sb3", "inv-y"), &map).unwrap();
        let replaced = replaced.expect("inv-x ended");
        assert_eq!(replaced.sandbox.attribution.invocation_id, "inv-x");
        assert!(replaced.invocation_ended.is_some());
        // The same invocation again: nothing ended.
        let (_, same) = reg.register("sb3", spec("sb3", "inv-y"), &map).unwrap();
        assert!(same.is_none());
    }

    #[test]
    fn durable_write_round_trips_0600_without_a_tmp_file() {
        let f = fixture(&["sb1", "sb2"]);
        let map = FakeMap::default();
        let reg = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        reg.restore(&map).unwrap();
        let a = reg.register("sb1", spec("sb1", "inv-a"), &map).unwrap().0;
        let b = reg.register("sb2", spec("sb2", "inv-b"), &map).unwrap().0;
        reg.unregister("sb2", &map).unwrap();
        assert_eq!(crate::statefile::tests::mode_of(&f.file), 0o600);
        assert!(!crate::statefile::tmp_path(&f.file).exists());
        let back = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        let ids: Vec<String> = back.list().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["sb1"]);
        for (sb, inv) in [(&a, "inv-a"), (&b, "inv-b")] {
            let pair = AttrRef {
                slot: sb.slot,
                generation: sb.generation,
            };
            assert_eq!(back.resolve(pair).unwrap().invocation_id, inv);
        }
        // Left world-readable by an older version: tightened at open.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f.file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Registry::open(f.root.clone(), f.file.clone()).unwrap();
        assert_eq!(crate::statefile::tests::mode_of(&f.file), 0o600);
    }

    #[test]
    fn a_missing_file_is_an_empty_registry_a_corrupt_one_an_error_naming_it() {
        let f = fixture(&[]);
        assert!(Registry::open(f.root.clone(), f.file.clone())
            .unwrap()
            .list()
            .is_empty());
        for bad in [&b""[..], b"{\"next_slot\": 3, \"sandb", b"\0\0\0\0"] {
            std::fs::write(&f.file, bad).unwrap();
            let Err(e) = Registry::open(f.root.clone(), f.file.clone()) else {
                panic!("a corrupt registry was accepted");
            };
            assert!(matches!(&e, RegistryError::Corrupt { path, .. } if *path == f.file));
            let msg = e.to_string();
            let shown = f.file.display().to_string();
            assert!(
                msg.contains(&format!("mv {shown} {shown}.corrupt")),
                "{msg}"
            );
        }
        // Unreadable (here: a directory where the file should be).
        std::fs::remove_file(&f.file).unwrap();
        std::fs::create_dir(&f.file).unwrap();
        let Err(e) = Registry::open(f.root.clone(), f.file.clone()) else {
            panic!("an unreadable registry was accepted");
        };
        assert!(matches!(&e, RegistryError::Unreadable { path, .. } if *path == f.file));
        assert!(e.to_string().contains(&f.file.display().to_string()));
    }

    #[test]
    fn pairs_the_kernel_holds_are_never_handed_out_again_after_a_lost_write() {
        let f = fixture(&["sb1", "sb2", "sb3"]);
        let map = FakeMap::default();
        let reg = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        reg.restore(&map).unwrap();
        reg.register("sb1", spec("sb1", "inv-1a"), &map).unwrap();
        // What the disk holds after a power loss ate the writes below.
        let snapshot = std::fs::read(&f.file).unwrap();
        reg.register("sb2", spec("sb2", "inv-2"), &map).unwrap();
        let sock2 = map.connect(cgroup_id(&f, "sb2"));
        reg.register("sb1", spec("sb1", "inv-1b"), &map).unwrap();
        let sock1 = map.connect(cgroup_id(&f, "sb1"));
        drop(reg);
        // Crash; the sandbox of sb2 is gone, its socket still open.
        map.clear(cgroup_id(&f, "sb2"));
        std::fs::write(&f.file, &snapshot).unwrap();

        let reg = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        reg.restore(&map).unwrap();
        let held = [sock1, sock2];
        let fresh = reg.register("sb3", spec("sb3", "inv-3"), &map).unwrap().0;
        let again = reg.register("sb1", spec("sb1", "inv-1c"), &map).unwrap().0;
        for sb in [&fresh, &again] {
            let pair = AttrRef {
                slot: sb.slot,
                generation: sb.generation,
            };
            assert!(!held.contains(&pair), "{pair:?} handed out again");
        }
        // Old sockets never resolve to a new invocation.
        for sock in held {
            let inv = reg.resolve(sock).map(|a| a.invocation_id);
            assert!(
                !matches!(inv.as_deref(), Some("inv-3" | "inv-1c")),
                "{sock:?} resolved to {inv:?}"
            );
        }
        // The kernel's newer pair of sb1 was not overwritten by the stale
        // one from the file (that would attribute new sockets to inv-1a).
        drop(reg);
        map.set(cgroup_id(&f, "sb1"), sock1).unwrap();
        std::fs::write(&f.file, &snapshot).unwrap();
        let reg = Registry::open(f.root.clone(), f.file.clone()).unwrap();
        reg.restore(&map).unwrap();
        assert_eq!(map.get(cgroup_id(&f, "sb1")), Some(sock1));
    }
}

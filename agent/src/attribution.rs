//! The attribution registry: sandbox → (slot, generation) → attribution.
//!
//! The kernel tags each socket with the (slot, generation) its cgroup had at
//! `connect()`. Re-registering a sandbox bumps the generation, so sockets
//! opened earlier keep resolving to the attribution they were opened under.
//! Past generations are kept (bounded) and the registry is persisted in the
//! state dir, so a restarted agent still resolves sockets from before.
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
    Persist(std::io::Error),
    #[error("kernel map: {0}")]
    Kernel(String),
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    next_slot: u32,
    sandboxes: BTreeMap<String, Sandbox>,
    /// (slot, generation) → attribution, oldest first.
    history: VecDeque<(u32, u32, Attribution)>,
}

/// What the registry needs from the kernel half (kept abstract so the
/// registry logic is testable without BPF).
pub trait AttrMap: Send + Sync {
    fn set(&self, cgroup_id: u64, attr: AttrRef) -> Result<(), String>;
    fn clear(&self, cgroup_id: u64);
}

impl AttrMap for crate::bpf::KernelMaps {
    fn set(&self, cgroup_id: u64, attr: AttrRef) -> Result<(), String> {
        self.set_attribution(cgroup_id, attr)
            .map_err(|e| e.to_string())
    }
    fn clear(&self, cgroup_id: u64) {
        self.clear_attribution(cgroup_id)
    }
}

type HistoryIndex = HashMap<(u32, u32), Attribution>;

pub struct Registry {
    root: PathBuf,
    file: PathBuf,
    /// Persisted state plus an index of `history` by (slot, generation).
    state: Mutex<(State, HistoryIndex)>,
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Registry {
    /// Opens the registry persisted at `file`; `root` is the absolute sandbox
    /// root cgroup directory.
    pub fn open(root: PathBuf, file: PathBuf) -> Registry {
        let state: State = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let index = state
            .history
            .iter()
            .map(|(s, g, a)| ((*s, *g), a.clone()))
            .collect();
        Registry {
            root,
            file,
            state: Mutex::new((state, index)),
        }
    }

    /// Re-writes the kernel's map from the persisted sandboxes (after restart).
    pub fn restore(&self, kernel: &dyn AttrMap) {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for sb in guard.0.sandboxes.values() {
            let attr = AttrRef {
                slot: sb.slot,
                generation: sb.generation,
            };
            if let Err(e) = kernel.set(sb.cgroup_id, attr) {
                tracing::warn!(sandbox = %sb.id, "restoring attribution: {e}");
            }
        }
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

    pub fn register(
        &self,
        id: &str,
        spec: SandboxSpec,
        kernel: &dyn AttrMap,
    ) -> Result<Sandbox, RegistryError> {
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
        let (state, index) = &mut *guard;
        let (slot, generation) = match state.sandboxes.get(id) {
            Some(old) if old.cgroup_id == cgroup_id => (old.slot, old.generation.wrapping_add(1)),
            Some(old) => {
                kernel.clear(old.cgroup_id);
                (old.slot, old.generation.wrapping_add(1))
            }
            None => {
                state.next_slot = state.next_slot.wrapping_add(1);
                (state.next_slot, 1)
            }
        };
        let sb = Sandbox {
            id: id.to_owned(),
            cgroup,
            cgroup_id,
            netns: spec.netns,
            slot,
            generation,
            attribution: spec.attribution,
        };
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
        self.persist(state)?;
        // Kernel last: once sockets get the new tag, it resolves.
        kernel
            .set(cgroup_id, AttrRef { slot, generation })
            .map_err(RegistryError::Kernel)?;
        Ok(sb)
    }

    pub fn unregister(&self, id: &str, kernel: &dyn AttrMap) -> Result<Sandbox, RegistryError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut guard.0;
        let sb = state
            .sandboxes
            .remove(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        kernel.clear(sb.cgroup_id);
        self.persist(state)?;
        Ok(sb)
    }

    pub fn list(&self) -> Vec<Sandbox> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.sandboxes.values().cloned().collect()
    }

    /// The attribution a socket tagged with `attr` was opened under.
    pub fn resolve(&self, attr: AttrRef) -> Option<Attribution> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.get(&(attr.slot, attr.generation)).cloned()
    }

    /// The sandbox currently holding `slot`, if any.
    pub fn sandbox_by_slot(&self, slot: u32) -> Option<Sandbox> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.sandboxes.values().find(|s| s.slot == slot).cloned()
    }

    fn persist(&self, state: &State) -> Result<(), RegistryError> {
        let tmp = self.file.with_extension("tmp");
        let bytes = serde_json::to_vec(state).map_err(|e| RegistryError::Persist(e.into()))?;
        std::fs::write(&tmp, bytes).map_err(RegistryError::Persist)?;
        std::fs::rename(&tmp, &self.file).map_err(RegistryError::Persist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeMap(Mutex<HashMap<u64, AttrRef>>);
    impl AttrMap for FakeMap {
        fn set(&self, cgroup_id: u64, attr: AttrRef) -> Result<(), String> {
            self.0.lock().unwrap().insert(cgroup_id, attr);
            Ok(())
        }
        fn clear(&self, cgroup_id: u64) {
            self.0.lock().unwrap().remove(&cgroup_id);
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

    #[test]
    fn reregistration_keeps_old_generation_resolvable_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("egret-reg-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sb1")).unwrap();
        let root = root.canonicalize().unwrap();
        let file = dir.join("registry.json");
        let map = FakeMap::default();
        let reg = Registry::open(root.clone(), file.clone());
        let a = reg.register("sb1", spec("sb1", "inv-a"), &map).unwrap();
        let b = reg.register("sb1", spec("sb1", "inv-b"), &map).unwrap();
        assert_eq!(a.slot, b.slot);
        assert_ne!(a.generation, b.generation);
        let old = AttrRef {
            slot: a.slot,
            generation: a.generation,
        };
        assert_eq!(reg.resolve(old).unwrap().invocation_id, "inv-a");
        let reopened = Registry::open(root, file);
        assert_eq!(reopened.resolve(old).unwrap().invocation_id, "inv-a");
        assert!(matches!(
            reg.register("x", spec("../../etc", "i"), &map),
            Err(RegistryError::OutsideRoot(_)) | Err(RegistryError::Cgroup { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

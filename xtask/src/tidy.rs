//! Rules the code keeps, checked as tests (after rust-analyzer's
//! `xtask/src/tidy.rs`): `cargo xtask tidy`, and `cargo test -p xtask`
//! (part of `cargo xtask test`, so CI fails when a rule is broken).
//!
//! - **Layering** (docs/architecture.md, "Layering"): every top-level module
//!   of the agent crate has a layer in [`LAYERS`]; a module uses only
//!   modules of lower layers (`crate::…` paths), never its own layer or
//!   above. A new module gets a row here, or the check fails.
//! - **Typed errors**: no `Result<_, String>` in the agent crate below the
//!   binary's edge (`main.rs`); errors are `thiserror` enums that keep their
//!   source.
//! - **No public fuzz hooks**: a `fuzz_*` function exists only under
//!   `#[cfg(fuzzing)]`.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// The agent crate's modules, lowest layer first. A module may use modules
/// of the layers before its own, and nothing else of the crate.
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "net",
            "semconv",
            "ratelimit",
            "statefile",
            "cgroup",
            "netns",
            "admin",
        ],
    ),
    ("providers", &["providers"]),
    ("values", &["config", "record"]),
    (
        "kernel and codecs",
        &[
            "bpf",
            "tls",
            "store",
            "genai",
            "credentials",
            "cost",
            "redact",
        ],
    ),
    ("attribution", &["attribution"]),
    (
        "over attribution",
        &["policy", "budget", "flow", "sink", "proxy_protocol"],
    ),
    ("components", &["proxy", "recorder"]),
    ("control", &["api", "reload"]),
    ("wiring", &["app"]),
    ("commands", &["doctor", "records", "sandbox"]),
];

/// Files that are the binary's edge (anyhow and strings allowed).
const EDGE: &[&str] = &["main.rs"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// One source file: its path relative to the crate's `src/` and its text.
pub struct Source {
    pub rel: PathBuf,
    pub text: String,
}

/// Reads every `.rs` file under `src`.
pub fn read_sources(src: &Path) -> std::io::Result<Vec<Source>> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path)?;
                let rel = path.strip_prefix(src).unwrap_or(&path).to_path_buf();
                out.push(Source { rel, text });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The top-level module a file belongs to (`proxy/http.rs` → `proxy`);
/// `None` for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The code of a line without its `//` comment (string literals containing
/// `//` are rare enough in `use` lines not to matter).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every top-level crate module a file refers to: `crate::x…` paths and the
/// first segment of each item of a `use crate::{…}` group.
fn crate_refs(text: &str) -> Vec<String> {
    let code: String = text.lines().map(code).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_heads(group));
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.push(ident);
            }
        }
    }
    out
}

/// The first path segment of each item in a `{…}` group (the text after
/// the opening brace), at depth one only.
fn group_heads(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut at_item_start = true;
    let mut ident = String::new();
    for c in group.chars() {
        match c {
            '{' => {
                depth += 1;
                at_item_start = false;
            }
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if at_item_start && (c.is_alphanumeric() || c == '_') => ident.push(c),
            c if at_item_start && c.is_whitespace() && ident.is_empty() => {}
            _ => {
                if at_item_start && !ident.is_empty() {
                    out.push(std::mem::take(&mut ident));
                }
                at_item_start = false;
            }
        }
        if !at_item_start && !ident.is_empty() {
            out.push(std::mem::take(&mut ident));
        }
    }
    if !ident.is_empty() {
        out.push(ident);
    }
    out
}

/// Layering findings for the agent crate.
pub fn check_layers(sources: &[Source]) -> Vec<String> {
    let mut findings = Vec::new();
    let mut modules: Vec<String> = sources.iter().filter_map(|s| module_of(&s.rel)).collect();
    modules.sort();
    modules.dedup();
    for m in &modules {
        if layer_of(m).is_none() {
            findings.push(format!(
                "agent/src/{m}: module has no layer; add it to xtask/src/tidy.rs LAYERS \
                 and to docs/architecture.md (Layering)"
            ));
        }
    }
    for s in sources {
        let Some(from) = module_of(&s.rel) else {
            continue;
        };
        let Some(from_layer) = layer_of(&from) else {
            continue;
        };
        let mut seen = Vec::new();
        for to in crate_refs(&s.text) {
            if to == from || seen.contains(&to) || !modules.contains(&to) {
                continue;
            }
            seen.push(to.clone());
            let to_layer = layer_of(&to).unwrap_or(usize::MAX);
            if to_layer >= from_layer {
                findings.push(format!(
                    "agent/src/{}: `{from}` ({}) uses `{to}` ({}): a module uses only lower layers",
                    s.rel.display(),
                    LAYERS[from_layer].0,
                    LAYERS.get(to_layer).map_or("no layer", |l| l.0),
                ));
            }
        }
    }
    findings
}

/// The type arguments of each `Result<…>` in a line, split at depth one.
fn result_args(line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("Result<") {
        rest = &rest[i + "Result<".len()..];
        let mut depth = 0usize;
        let mut args = vec![String::new()];
        for c in rest.chars() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' if depth == 0 => break,
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(String::new());
                    continue;
                }
                _ => {}
            }
            args.last_mut().expect("one arg").push(c);
        }
        out.push(args.into_iter().map(|a| a.trim().to_owned()).collect());
    }
    out
}

/// `Result<_, String>` findings (below the binary's edge).
pub fn check_string_errors(sources: &[Source]) -> Vec<String> {
    let mut findings = Vec::new();
    for s in sources {
        if EDGE.iter().any(|e| s.rel == Path::new(e)) {
            continue;
        }
        for (n, line) in s.text.lines().enumerate() {
            for args in result_args(code(line)) {
                if args.get(1).is_some_and(|e| e == "String" || e == "&str") {
                    findings.push(format!(
                        "agent/src/{}:{}: `Result<_, {}>`: use a thiserror enum that keeps the source",
                        s.rel.display(),
                        n + 1,
                        args[1]
                    ));
                }
            }
        }
    }
    findings
}

/// `fuzz_*` functions outside `#[cfg(fuzzing)]`.
pub fn check_fuzz_hooks(sources: &[Source]) -> Vec<String> {
    let mut findings = Vec::new();
    for s in sources {
        let gated_file = s
            .text
            .lines()
            .any(|l| l.starts_with("#![cfg(") && l.contains("fuzzing"));
        let lines: Vec<&str> = s.text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let t = code(line).trim_start();
            if !(t.starts_with("pub fn fuzz_") || t.starts_with("pub async fn fuzz_")) {
                continue;
            }
            let attrs = lines[..n]
                .iter()
                .rev()
                .take_while(|l| {
                    let l = l.trim_start();
                    l.starts_with("#[") || l.starts_with("///")
                })
                .any(|l| l.contains("cfg(") && l.contains("fuzzing"));
            if !(gated_file || attrs) {
                findings.push(format!(
                    "agent/src/{}:{}: fuzz hook outside #[cfg(fuzzing)]",
                    s.rel.display(),
                    n + 1
                ));
            }
        }
    }
    findings
}

/// Every finding for the workspace at `root`.
pub fn check(root: &Path) -> std::io::Result<Vec<String>> {
    let sources = read_sources(&root.join("agent/src"))?;
    let mut findings = check_layers(&sources);
    findings.extend(check_string_errors(&sources));
    findings.extend(check_fuzz_hooks(&sources));
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(rel: &str, text: &str) -> Source {
        Source {
            rel: PathBuf::from(rel),
            text: text.to_owned(),
        }
    }

    #[test]
    fn the_agent_keeps_every_rule() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let findings = check(&root).expect("reading agent/src");
        assert!(findings.is_empty(), "tidy:\n{}", findings.join("\n"));
    }

    #[test]
    fn crate_paths_and_groups_name_their_modules() {
        let refs = crate_refs(
            "use crate::{\n    config::{Config, Node},\n    net::Cidr,\n    record,\n};\n\
             let x = crate::store::Spool::open(); // crate::proxy in a comment\n\
             $crate::ratelimit::hit(); my_crate::other();",
        );
        assert_eq!(refs, ["config", "net", "record", "store"]);
    }

    #[test]
    fn an_upward_or_sideways_import_is_a_finding() {
        let sources = [
            src("config/mod.rs", "use crate::net::Cidr;\n"),
            src("net.rs", "use crate::config::Config;\n"),
            src(
                "proxy/http.rs",
                "use crate::{recorder::X, policy::Policy};\n",
            ),
            src("recorder.rs", ""),
            src("policy.rs", ""),
        ];
        let f = check_layers(&sources);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(
            f[0].contains("`net` (leaves) uses `config` (values)"),
            "{f:#?}"
        );
        assert!(
            f[1].contains("`proxy` (components) uses `recorder` (components)"),
            "{f:#?}"
        );
    }

    #[test]
    fn a_module_without_a_layer_is_a_finding() {
        let f = check_layers(&[src("newthing.rs", "")]);
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("newthing: module has no layer"));
    }

    #[test]
    fn string_errors_are_found_at_depth_one_only() {
        let sources = [
            src(
                "a.rs",
                "fn f() -> Result<(), String> {}\nfn g() -> Result<Vec<String>, E> {}\n",
            ),
            src("b.rs", "fn h() -> io::Result<HashMap<u64, String>> {}\n"),
            src("main.rs", "fn m() -> Result<(), String> {}\n"),
        ];
        let f = check_string_errors(&sources);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].starts_with("agent/src/a.rs:1:"));
    }

    #[test]
    fn fuzz_hooks_must_be_gated() {
        let sources = [
            src("a.rs", "pub fn fuzz_parse(b: &[u8]) {}\n"),
            src(
                "b.rs",
                "#[cfg(fuzzing)]\n/// doc\npub fn fuzz_parse(b: &[u8]) {}\n",
            ),
            src(
                "c.rs",
                "/// doc\n#[cfg(any(test, fuzzing))]\npub fn fuzz_parse(b: &[u8]) {}\n",
            ),
        ];
        let f = check_fuzz_hooks(&sources);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].starts_with("agent/src/a.rs:1:"));
    }
}

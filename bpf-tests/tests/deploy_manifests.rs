//! `deploy/validate.sh`: the Kubernetes manifests against the Kubernetes
//! schemas, and the ConfigMap's and docs' egret configs through
//! `egret config check` (with `EGRET_BIN`, which `cargo xtask test` sets).
//! When the validator cannot be set up (no python3-venv, no PyPI) the test
//! prints why and passes — except when `CI` is set, where it fails.
use std::process::Command;

#[test]
fn deploy_manifests_and_doc_configs_validate() {
    let root = bpf_tests::workspace_root();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("deploy/validate.sh")).current_dir(&root);
    if std::env::var_os("EGRET_BIN").is_none() && root.join("target/debug/egret").exists() {
        cmd.env("EGRET_BIN", root.join("target/debug/egret"));
    }
    let out = cmd.output().expect("running bash deploy/validate.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {}
        Some(77) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED deploy/validate.sh: validator unavailable:\n{text}");
        }
        _ => panic!("deploy/validate.sh failed ({}):\n{text}", out.status),
    }
}

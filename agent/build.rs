//! Builds the kernel half (`ebpf/`) and hands the object to the agent, which
//! embeds it. Same command as `cargo xtask build-ebpf`: nightly,
//! `-Z build-std=core`, target `bpfel-unknown-none`, linked by bpf-linker.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest
        .parent()
        .expect("agent/ lives in the workspace")
        .to_path_buf();
    let ebpf = root.join("ebpf");
    let target_dir = root.join("target").join("ebpf");
    for p in [
        "ebpf/src",
        "ebpf/Cargo.toml",
        "ebpf/Cargo.lock",
        "common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=EGRET_EBPF_OBJECT");

    let object = match env::var_os("EGRET_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let status = Command::new("cargo")
                .current_dir(&ebpf)
                // Stable's RUSTUP_TOOLCHAIN would override ebpf/rust-toolchain.toml.
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTC")
                .env_remove("RUSTC_WRAPPER")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .args(["+nightly", "build", "--release", "-Z", "build-std=core"])
                .args(["--target", "bpfel-unknown-none", "--target-dir"])
                .arg(&target_dir)
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => panic!(
                    "building ebpf/ failed ({s}); run `cargo xtask setup` to install nightly rust-src and bpf-linker, then `cargo xtask build-ebpf` for details"
                ),
                Err(e) => panic!("could not run cargo for ebpf/: {e}"),
            }
            target_dir.join("bpfel-unknown-none/release/egret")
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it")).join("egret.bpf.o");
    std::fs::copy(&object, &out)
        .unwrap_or_else(|e| panic!("copying {} failed: {e}", object.display()));
}

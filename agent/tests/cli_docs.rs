//! Every command-line flag egret has is documented: each `--flag` that
//! `egret --help` or a subcommand's `--help` prints appears in README.md or
//! a page under docs/ (`--help` itself aside).
use std::{collections::BTreeSet, path::Path, process::Command};

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run egret --help");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `--flag` words of a help text.
fn flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && w.as_bytes()[2].is_ascii_lowercase())
        .map(str::to_owned)
        .collect()
}

/// Subcommand names listed under `Commands:`.
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_flag_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut docs = std::fs::read_to_string(root.join("README.md")).unwrap();
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            docs.push_str(&std::fs::read_to_string(p).unwrap());
        }
    }
    let mut all = BTreeSet::new();
    let mut stack: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = stack.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        seen += 1;
        all.extend(flags(&text));
        for sub in subcommands(&text) {
            let mut p = path.clone();
            p.push(sub);
            stack.push(p);
        }
    }
    assert!(seen > 10, "walked only {seen} help pages");
    all.remove("--help");
    let missing: Vec<&String> = all.iter().filter(|f| !docs.contains(f.as_str())).collect();
    assert!(missing.is_empty(), "undocumented flags: {missing:?}");
}

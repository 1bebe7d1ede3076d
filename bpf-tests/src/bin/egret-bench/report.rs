//! What a bench hands back: a markdown section and its target checks.
use crate::util::fmt_num;

/// One goal from the issue, checked against a measurement.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
    /// How far from the goal (positive = headroom).
    pub margin: String,
}

impl Target {
    /// `value` must be at least `goal`.
    pub fn at_least(name: &str, value: f64, goal: f64, unit: &str) -> Target {
        let met = value >= goal;
        Target {
            name: name.to_owned(),
            goal: format!("≥ {}{unit}", fmt_num(goal)),
            measured: format!("{}{unit}", fmt_num(value)),
            met,
            margin: if goal != 0.0 {
                format!("{:+.1}%", (value / goal - 1.0) * 100.0)
            } else {
                "—".into()
            },
        }
    }

    /// `value` must be at most `goal`.
    pub fn at_most(name: &str, value: f64, goal: f64, unit: &str) -> Target {
        let met = value <= goal;
        Target {
            name: name.to_owned(),
            goal: format!("≤ {}{unit}", fmt_num(goal)),
            measured: format!("{}{unit}", fmt_num(value)),
            met,
            margin: format!("{}{unit}", signed(goal - value)),
        }
    }

    /// A zero-loss style check.
    pub fn exact(name: &str, value: u64, expected: u64) -> Target {
        Target {
            name: name.to_owned(),
            goal: format!("= {expected}"),
            measured: value.to_string(),
            met: value == expected,
            margin: format!("{:+}", value as i64 - expected as i64),
        }
    }
}

fn signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{}", fmt_num(x))
    } else {
        format!("−{}", fmt_num(-x))
    }
}

/// A bench's contribution to docs/benchmarks.md.
#[derive(Debug, Clone)]
pub struct Section {
    /// Marker id: proxy, stream, ebpf, pipeline, profile.
    pub id: &'static str,
    pub title: String,
    pub body: String,
    pub targets: Vec<Target>,
}

impl Section {
    pub fn markdown(&self) -> String {
        let mut s = format!("## {}\n\n{}\n", self.title, self.body.trim_end());
        if !self.targets.is_empty() {
            s.push_str("\n**Targets**\n\n");
            s.push_str(&targets_table(&self.targets));
        }
        s
    }
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut s =
        String::from("| target | goal | measured | met | margin |\n|---|---|---|---|---|\n");
    for t in targets {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            t.name,
            t.goal,
            t.measured,
            if t.met { "✅ met" } else { "❌ missed" },
            t.margin
        ));
    }
    s
}

/// A markdown table from a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", header.join(" | "));
    for _ in header {
        s.push_str("---|");
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

const BEGIN: &str = "<!-- bench:";
const END: &str = "<!-- /bench:";

/// Replaces (or appends) each section between its markers in `doc`, and
/// the header between the `header` markers.
pub fn merge(doc: &str, header: &str, sections: &[Section]) -> String {
    let mut out = replace_block(doc, "header", header);
    for s in sections {
        out = replace_block(&out, s.id, &s.markdown());
    }
    out
}

fn replace_block(doc: &str, id: &str, content: &str) -> String {
    let begin = format!("{BEGIN}{id} -->");
    let end = format!("{END}{id} -->");
    let block = format!("{begin}\n{}\n{end}", content.trim_end());
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &doc[..b], block, &doc[e + end.len()..])
        }
        _ => {
            let mut s = doc.trim_end().to_owned();
            if !s.is_empty() {
                s.push_str("\n\n");
            }
            s.push_str(&block);
            s.push('\n');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_is_met_only_at_the_value() {
        assert!(Target::exact("t", 10, 10).met);
        assert!(!Target::exact("t", 11, 10).met);
        assert_eq!(Target::exact("t", 9, 10).margin, "-1");
    }

    #[test]
    fn merge_replaces_only_named_blocks() {
        let s = |id, body: &str| Section {
            id,
            title: id.to_owned(),
            body: body.to_owned(),
            targets: vec![],
        };
        let doc = merge("# T\n", "h1", &[s("proxy", "a"), s("stream", "b")]);
        let doc2 = merge(&doc, "h2", &[s("proxy", "c")]);
        assert!(doc2.contains("h2") && !doc2.contains("h1"));
        assert!(doc2.contains("c\n") && !doc2.contains("\na\n"));
        assert!(doc2.contains("\nb\n"));
        assert!(doc2.find("proxy").unwrap() < doc2.find("stream").unwrap());
    }
}

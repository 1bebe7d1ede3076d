//! egret's semantic-convention registry (`docs/semconv/`) against the code
//! and the docs:
//!
//! - every file parses as OpenTelemetry semantic-convention YAML (groups
//!   with id, type, brief; attributes with id, type, brief, examples,
//!   stability, or a `ref`; events with a name; metrics with metric_name,
//!   instrument and unit), and the manifest names the core registry egret's
//!   OTLP schema URL points at;
//! - every name in `agent/src/semconv.rs` is in the registry and every name
//!   in the registry is in `semconv.rs`, by kind (attribute, event, metric,
//!   enum value), and the types of the attributes egret defines agree
//!   (with `semconv::DEFINED` and with the ClickHouse columns);
//! - the metrics the OTLP aggregator exports have the registry's names,
//!   instruments, units and attributes;
//! - `docs/attributes.md` documents every attribute egret defines, with the
//!   registry's type, and documents no `egret.*` / seed-contract name the
//!   registry lacks.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use egret::{
    record::Record,
    semconv::{self as sc, AttrType},
    sink::{
        clickhouse::column_type,
        otlp::{encode::SEMCONV_SCHEMA_URL, metrics::Aggregator},
    },
};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use serde::Deserialize;

// ---- the YAML model (the subset of the semconv schema egret uses) ---------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    groups: Vec<Group>,
    #[serde(default)]
    imports: Option<Imports>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Imports {
    #[serde(default)]
    metrics: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    brief: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    stability: Option<String>,
    #[serde(default)]
    span_kind: Option<String>,
    /// Event name.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metric_name: Option<String>,
    #[serde(default)]
    instrument: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    attributes: Vec<Attribute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attribute {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default, rename = "type")]
    ty: Option<AttrTypeSpec>,
    #[serde(default)]
    brief: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    examples: Option<serde_norway::Value>,
    #[serde(default)]
    stability: Option<String>,
    #[serde(default)]
    requirement_level: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AttrTypeSpec {
    Simple(String),
    Enum { members: Vec<Member> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    id: String,
    value: serde_norway::Value,
    brief: String,
    stability: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    file_format: String,
    schema_url: String,
    description: String,
    stability: String,
    dependencies: Vec<Dependency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dependency {
    schema_url: String,
    registry_path: String,
}

// ---- loading --------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn registry_dir() -> PathBuf {
    repo().join("docs/semconv")
}

/// Every registry file but the manifest, by file name.
fn load_files() -> Vec<(String, File)> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(registry_dir())
        .expect("docs/semconv")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "manifest.yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "registry files: {paths:?}");
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let file: File = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not semconv YAML: {e}", p.display()));
        out.push((p.file_name().unwrap().to_string_lossy().into_owned(), file));
    }
    out
}

/// What the registry says, by kind of name.
#[derive(Debug, Default)]
struct Registry {
    /// Attributes egret defines, with their type (`string` for enums).
    defined: BTreeMap<String, String>,
    /// Enum values of each defined enum attribute.
    members: BTreeMap<String, BTreeSet<String>>,
    /// Attributes referenced from spans, events, metrics and groups.
    refs: BTreeSet<String>,
    events: BTreeSet<String>,
    /// egret's metrics: name → (instrument, unit, attributes).
    metrics: BTreeMap<String, (String, String, BTreeSet<String>)>,
    imported_metrics: BTreeSet<String>,
    groups: BTreeMap<String, BTreeSet<String>>,
}

const STABILITY: &[&str] = &[
    "stable",
    "development",
    "alpha",
    "beta",
    "release_candidate",
];
const TYPES: &[&str] = &[
    "string",
    "int",
    "double",
    "boolean",
    "string[]",
    "int[]",
    "double[]",
    "boolean[]",
    "any",
];
const INSTRUMENTS: &[&str] = &["counter", "updowncounter", "gauge", "histogram"];

/// Checks the required fields of every group, attribute and metric and
/// collects the names; every problem is a line of the returned list.
fn collect(files: &[(String, File)], errors: &mut Vec<String>) -> Registry {
    let mut reg = Registry::default();
    let mut group_ids = BTreeSet::new();
    for (file, f) in files {
        if let Some(imp) = &f.imports {
            reg.imported_metrics.extend(imp.metrics.iter().cloned());
            if !imp.events.is_empty() {
                errors.push(format!("{file}: egret imports no events"));
            }
        }
        for g in &f.groups {
            let at = format!("{file}: group {}", g.id);
            if g.id.trim().is_empty() || !group_ids.insert(g.id.clone()) {
                errors.push(format!("{at}: empty or duplicate id"));
            }
            if g.brief.trim().is_empty() {
                errors.push(format!("{at}: empty brief"));
            }
            let _ = (&g.note, &g.display_name);
            let needs_stability = matches!(g.kind.as_str(), "span" | "event" | "metric");
            match &g.stability {
                Some(s) if !STABILITY.contains(&s.as_str()) => {
                    errors.push(format!("{at}: unknown stability {s:?}"))
                }
                None if needs_stability => errors.push(format!("{at}: no stability")),
                _ => {}
            }
            match g.kind.as_str() {
                "attribute_group" => {}
                "span" => {
                    if !matches!(
                        g.span_kind.as_deref(),
                        Some("client" | "server" | "internal" | "producer" | "consumer")
                    ) {
                        errors.push(format!("{at}: span_kind {:?}", g.span_kind));
                    }
                }
                "event" => match &g.name {
                    Some(n) if !n.is_empty() => {
                        if g.id != format!("event.{n}") {
                            errors.push(format!("{at}: an event's id is event.<name>"));
                        }
                        reg.events.insert(n.clone());
                    }
                    _ => errors.push(format!("{at}: an event needs a name")),
                },
                "metric" => {}
                other => errors.push(format!("{at}: unknown group type {other:?}")),
            }
            if g.kind != "metric"
                && (g.metric_name.is_some() || g.instrument.is_some() || g.unit.is_some())
            {
                errors.push(format!("{at}: metric fields on a {} group", g.kind));
            }
            let registry_group = g.id.starts_with("registry.");
            if registry_group && g.kind != "attribute_group" {
                errors.push(format!("{at}: registry groups are attribute groups"));
            }
            let mut names = BTreeSet::new();
            for a in &g.attributes {
                match (&a.id, &a.reference) {
                    (Some(id), None) => {
                        let at = format!("{at}: attribute {id}");
                        if !registry_group {
                            errors.push(format!("{at}: defined outside a registry.* group"));
                        }
                        if a.brief.as_deref().is_none_or(|b| b.trim().is_empty()) {
                            errors.push(format!("{at}: no brief"));
                        }
                        if a.examples.is_none() {
                            errors.push(format!("{at}: no examples"));
                        }
                        match a.stability.as_deref() {
                            Some(s) if STABILITY.contains(&s) => {}
                            other => errors.push(format!("{at}: stability {other:?}")),
                        }
                        let ty = match &a.ty {
                            Some(AttrTypeSpec::Simple(t)) if TYPES.contains(&t.as_str()) => {
                                t.clone()
                            }
                            Some(AttrTypeSpec::Simple(t)) => {
                                errors.push(format!("{at}: unknown type {t:?}"));
                                t.clone()
                            }
                            Some(AttrTypeSpec::Enum { members }) => {
                                let mut values = BTreeSet::new();
                                for m in members {
                                    match m.value.as_str() {
                                        Some(v) => {
                                            values.insert(v.to_owned());
                                        }
                                        None => errors.push(format!(
                                            "{at}: member {}: egret's enums are strings",
                                            m.id
                                        )),
                                    }
                                    if m.brief.trim().is_empty()
                                        || !STABILITY.contains(&m.stability.as_str())
                                    {
                                        errors.push(format!(
                                            "{at}: member {}: brief and stability",
                                            m.id
                                        ));
                                    }
                                }
                                if values.is_empty() {
                                    errors.push(format!("{at}: enum without members"));
                                }
                                reg.members.insert(id.clone(), values);
                                "string".to_owned()
                            }
                            None => {
                                errors.push(format!("{at}: no type"));
                                String::new()
                            }
                        };
                        if reg.defined.insert(id.clone(), ty).is_some() {
                            errors.push(format!("{at}: defined twice"));
                        }
                        names.insert(id.clone());
                    }
                    (None, Some(r)) => {
                        let at = format!("{at}: ref {r}");
                        if registry_group {
                            errors.push(format!("{at}: refs belong outside registry.* groups"));
                        }
                        if a.ty.is_some() || a.examples.is_some() || a.stability.is_some() {
                            errors.push(format!("{at}: a ref only refines (requirement, note)"));
                        }
                        let _ = (&a.note, &a.requirement_level);
                        if !names.insert(r.clone()) {
                            errors.push(format!("{at}: listed twice"));
                        }
                        reg.refs.insert(r.clone());
                    }
                    _ => errors.push(format!("{at}: an attribute has exactly one of id, ref")),
                }
            }
            if g.kind == "metric" {
                let name = g.metric_name.clone().unwrap_or_default();
                let instrument = g.instrument.clone().unwrap_or_default();
                let unit = g.unit.clone().unwrap_or_default();
                if name.is_empty() || g.id != format!("metric.{name}") {
                    errors.push(format!("{at}: metric_name, and id metric.<metric_name>"));
                }
                if !INSTRUMENTS.contains(&instrument.as_str()) {
                    errors.push(format!("{at}: instrument {instrument:?}"));
                }
                if unit.is_empty() {
                    errors.push(format!("{at}: no unit"));
                }
                reg.metrics.insert(name, (instrument, unit, names.clone()));
            }
            if g.kind == "event" || g.kind == "span" {
                for must in [sc::RECORD_KIND, sc::RECORD_ID] {
                    if !names.contains(must) {
                        errors.push(format!("{at}: lacks {must}"));
                    }
                }
            }
            reg.groups.insert(g.id.clone(), names);
        }
    }
    reg
}

fn load() -> Registry {
    let mut errors = Vec::new();
    let reg = collect(&load_files(), &mut errors);
    assert!(errors.is_empty(), "registry:\n{}", errors.join("\n"));
    reg
}

// ---- semconv.rs -----------------------------------------------------------

/// Every `pub const NAME: &str = "value";` of `semconv.rs` (a value may be
/// on the next line).
fn semconv_constants() -> Vec<(String, String)> {
    let src = std::fs::read_to_string(repo().join("agent/src/semconv.rs")).unwrap();
    let mut out = Vec::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find("pub const ") {
        rest = &rest[i + "pub const ".len()..];
        let Some((name, after)) = rest.split_once(':') else {
            break;
        };
        let after = after.trim_start();
        if !after.starts_with("&str") {
            continue;
        }
        let value = after
            .split_once('"')
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| v.to_owned())
            .expect("a string constant");
        out.push((name.trim().to_owned(), value));
    }
    assert!(out.len() > 100, "parsed {} constants", out.len());
    out
}

/// Constants whose names start with these are values of an attribute.
const VALUE_PREFIXES: &[(&str, &str)] = &[
    ("KIND_", sc::RECORD_KIND),
    ("COMPONENT_", sc::COMPONENT),
    ("ATTRIBUTION_SOURCE_", sc::ATTRIBUTION_SOURCE),
    ("MCP_TRANSPORT_", sc::MCP_TRANSPORT),
    ("MCP_ANSWER_", sc::MCP_ANSWER),
];

#[derive(Debug, Default)]
struct Code {
    attributes: BTreeSet<String>,
    events: BTreeSet<String>,
    metrics: BTreeSet<String>,
    values: BTreeMap<String, BTreeSet<String>>,
}

fn code_names(consts: &[(String, String)]) -> Code {
    let mut code = Code::default();
    for (name, value) in consts {
        let value = value.clone();
        if name.starts_with("METRIC_") {
            code.metrics.insert(value);
        } else if name.starts_with("EVENT_") {
            code.events.insert(value);
        } else if let Some((_, attr)) = VALUE_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) {
            code.values
                .entry((*attr).to_owned())
                .or_default()
                .insert(value);
        } else {
            code.attributes.insert(value);
        }
    }
    code
}

fn both_ways(
    what: &str,
    code: &BTreeSet<String>,
    reg: &BTreeSet<String>,
    errors: &mut Vec<String>,
) {
    for n in code.difference(reg) {
        errors.push(format!(
            "{what} {n:?} is in semconv.rs but not in docs/semconv"
        ));
    }
    for n in reg.difference(code) {
        errors.push(format!(
            "{what} {n:?} is in docs/semconv but not in semconv.rs"
        ));
    }
}

/// The differences between the code's names and the registry's.
fn compare(code: &Code, reg: &Registry, defined: &[(&str, AttrType)]) -> Vec<String> {
    let mut errors = Vec::new();
    let reg_attrs: BTreeSet<String> = reg.defined.keys().chain(&reg.refs).cloned().collect();
    both_ways("attribute", &code.attributes, &reg_attrs, &mut errors);
    both_ways("event", &code.events, &reg.events, &mut errors);
    let reg_metrics: BTreeSet<String> = reg
        .metrics
        .keys()
        .chain(&reg.imported_metrics)
        .cloned()
        .collect();
    both_ways("metric", &code.metrics, &reg_metrics, &mut errors);
    for (_, attr) in VALUE_PREFIXES {
        let empty = BTreeSet::new();
        both_ways(
            &format!("value of {attr}"),
            code.values.get(*attr).unwrap_or(&empty),
            reg.members.get(*attr).unwrap_or(&empty),
            &mut errors,
        );
    }
    // A name egret defines is never also referenced as a core one.
    for r in &reg.refs {
        if reg.defined.contains_key(r) {
            continue;
        }
        if r.starts_with("egret.") || r.starts_with("agent.") || r == sc::INVOCATION_ID {
            errors.push(format!("{r:?} is referenced but egret's registry lacks it"));
        }
    }
    // Types: semconv::DEFINED is the list of names egret defines.
    let defined_code: BTreeMap<String, &str> = defined
        .iter()
        .map(|(n, t)| ((*n).to_owned(), t.as_str()))
        .collect();
    if defined_code.len() != defined.len() {
        errors.push("semconv::DEFINED lists a name twice".to_owned());
    }
    let code_set: BTreeSet<String> = defined_code.keys().cloned().collect();
    let reg_set: BTreeSet<String> = reg.defined.keys().cloned().collect();
    both_ways("defined attribute", &code_set, &reg_set, &mut errors);
    for (n, t) in &defined_code {
        if let Some(rt) = reg.defined.get(n) {
            if rt != t {
                errors.push(format!("{n}: semconv::DEFINED says {t}, docs/semconv {rt}"));
            }
        }
    }
    errors
}

#[test]
fn registry_parses_with_every_required_field() {
    let reg = load();
    assert!(reg.defined.len() > 80, "{}", reg.defined.len());
    for e in [sc::EVENT_TRANSACTION, sc::EVENT_FLOW] {
        assert!(reg.events.contains(e), "{e}");
    }
    for m in [
        sc::METRIC_TRANSACTIONS,
        sc::METRIC_FLOWS,
        sc::METRIC_L4_BYTES,
        sc::METRIC_OTLP_DROPPED,
        sc::METRIC_REQUESTS,
        sc::METRIC_REQUEST_DURATION,
        sc::METRIC_REQUEST_TOKENS,
        sc::METRIC_REQUEST_COST,
        sc::METRIC_GEN_AI_TIME_TO_FIRST_CHUNK,
        sc::METRIC_GEN_AI_TIME_PER_OUTPUT_CHUNK,
    ] {
        assert!(reg.metrics.contains_key(m), "{m}");
    }
    // The required-field checks catch a broken group.
    let broken: File = serde_norway::from_str(
        "groups:\n  - id: metric.x\n    type: metric\n    brief: b\n    stability: development\n    \
         metric_name: x\n    instrument: meter\n    attributes:\n      - id: x.a\n        type: strin\n",
    )
    .unwrap();
    let mut errors = Vec::new();
    collect(&[("broken.yaml".to_owned(), broken)], &mut errors);
    let text = errors.join("\n");
    for want in [
        "instrument \"meter\"",
        "no unit",
        "unknown type \"strin\"",
        "no examples",
        "defined outside a registry.* group",
    ] {
        assert!(text.contains(want), "{want} not reported:\n{text}");
    }
    assert!(serde_norway::from_str::<File>("groups:\n  - id: g\n    type: span\n").is_err());
}

#[test]
fn manifest_names_the_core_registry_of_the_schema_url() {
    let text = std::fs::read_to_string(registry_dir().join("manifest.yaml")).unwrap();
    let m: Manifest = serde_norway::from_str(&text).unwrap();
    assert_eq!(m.file_format, "definition_manifest/2.0");
    assert!(m.schema_url.starts_with("https://") && !m.description.trim().is_empty());
    assert!(STABILITY.contains(&m.stability.as_str()));
    assert_eq!(
        m.dependencies.len(),
        1,
        "weaver takes one direct dependency"
    );
    let core = &m.dependencies[0];
    assert_eq!(core.schema_url, SEMCONV_SCHEMA_URL);
    let version = SEMCONV_SCHEMA_URL.rsplit('/').next().unwrap();
    assert_eq!(version, "1.41.1");
    assert!(
        core.registry_path
            .contains(&format!("/v{version}.zip[model]")),
        "{}",
        core.registry_path
    );
}

#[test]
fn semconv_rs_and_the_registry_name_the_same_things() {
    let reg = load();
    let code = code_names(&semconv_constants());
    let errors = compare(&code, &reg, sc::DEFINED);
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // The comparison fails both ways: a name only in the code, a name only
    // in the registry, and a type that differs.
    let mut extra = code_names(&semconv_constants());
    extra.attributes.insert("egret.not.registered".to_owned());
    extra.attributes.remove(sc::SERVER_PORT);
    extra.metrics.remove(sc::METRIC_L4_BYTES);
    extra
        .values
        .get_mut(sc::RECORD_KIND)
        .unwrap()
        .remove(sc::KIND_FLOW);
    let mut defined = sc::DEFINED.to_vec();
    defined.retain(|(n, _)| *n != sc::AGENT_UID);
    defined.iter_mut().for_each(|(n, t)| {
        if *n == sc::DURATION_MS {
            *t = AttrType::Int;
        }
    });
    let text = compare(&extra, &reg, &defined).join("\n");
    for want in [
        "attribute \"egret.not.registered\" is in semconv.rs but not in docs/semconv",
        "attribute \"server.port\" is in docs/semconv but not in semconv.rs",
        "metric \"egret.l4.bytes\" is in docs/semconv but not in semconv.rs",
        "value of egret.record.kind \"flow\" is in docs/semconv",
        "defined attribute \"agent.uid\" is in docs/semconv but not in semconv.rs",
        "egret.duration_ms: semconv::DEFINED says int, docs/semconv double",
    ] {
        assert!(text.contains(want), "{want} not reported:\n{text}");
    }
}

/// The semconv type of a ClickHouse column type.
fn column_semconv_type(sql: &str) -> &'static str {
    match sql {
        s if s.contains("Array(String)") => "string[]",
        s if s.contains("Int64") => "int",
        s if s.contains("Float64") => "double",
        s if s.contains("UInt8") => "boolean",
        s if s.contains("String") => "string",
        other => panic!("unknown column type {other}"),
    }
}

#[test]
fn clickhouse_columns_have_the_registry_types() {
    let reg = load();
    let mut checked = 0;
    for (name, ty) in &reg.defined {
        if let Some(sql) = column_type(name) {
            assert_eq!(column_semconv_type(sql), ty, "{name}: column {sql}");
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} columns checked");
}

#[test]
fn exported_metrics_match_the_registry() {
    let reg = load();
    let mut agg = Aggregator::new(1, 100);
    let mut t = Record::new(sc::KIND_TRANSACTION);
    t.set(sc::GEN_AI_PROVIDER_NAME, "openai");
    t.set(sc::GEN_AI_OPERATION_NAME, "chat");
    t.set(sc::GEN_AI_REQUEST_MODEL, "gpt-4o");
    t.set(sc::GEN_AI_RESPONSE_MODEL, "gpt-4o-1");
    t.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 5i64);
    t.set(sc::GEN_AI_USAGE_OUTPUT_TOKENS, 7i64);
    t.set(sc::SERVER_ADDRESS, "api.openai.com");
    t.set(sc::SERVER_PORT, 443i64);
    t.set(sc::HTTP_RESPONSE_STATUS_CODE, 503i64);
    t.set(sc::DURATION_MS, 20.0);
    t.set(sc::GATEWAY_NAME, "gw");
    t.set(sc::ROUTE_NAME, "openai");
    t.set(sc::ERROR_TYPE, "upstream_error");
    t.set(sc::POLICY_DENIED, false);
    t.set(sc::BUDGET_DENIED, false);
    t.set(sc::AGENT_NAMESPACE, "ns");
    t.set(sc::GEN_AI_REQUEST_STREAM, true);
    t.set(sc::COST_USD, 0.01);
    t.set(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, 0.2);
    let mut gaps = egret::record::ChunkGaps::default();
    gaps.observe(0.01);
    t.set_chunk_gaps(gaps);
    agg.record(&t, Some("gw"));
    let mut f = Record::new(sc::KIND_FLOW);
    f.set(sc::L4_REDIRECTED, true);
    f.set(sc::L4_BYTES_SANDBOX_TX, 10i64);
    f.set(sc::L4_BYTES_SANDBOX_RX, 20i64);
    agg.record(&f, Some("gw"));
    let metrics = agg.metrics(2, &[(egret::sink::otlp::Signal::Logs, 1)]);
    let gen_ai_attrs = &reg.groups["egret.metric_attributes.gen_ai"];
    let mut seen = BTreeSet::new();
    for m in &metrics {
        seen.insert(m.name.clone());
        let (instrument, points): (&str, Vec<&[_]>) = match &m.data {
            Some(Data::Sum(s)) if s.is_monotonic => (
                "counter",
                s.data_points.iter().map(|p| &p.attributes[..]).collect(),
            ),
            Some(Data::Histogram(h)) => (
                "histogram",
                h.data_points.iter().map(|p| &p.attributes[..]).collect(),
            ),
            other => panic!("{}: unexpected data {other:?}", m.name),
        };
        let allowed = match reg.metrics.get(&m.name) {
            Some((inst, unit, attrs)) => {
                assert_eq!(inst, instrument, "{}", m.name);
                assert_eq!(unit, &m.unit, "{}", m.name);
                attrs
            }
            None => {
                assert!(reg.imported_metrics.contains(&m.name), "{}", m.name);
                gen_ai_attrs
            }
        };
        for attrs in points {
            for kv in attrs {
                assert!(
                    allowed.contains(&kv.key),
                    "{}: attribute {} not in the registry",
                    m.name,
                    kv.key
                );
            }
        }
    }
    let all: BTreeSet<String> = reg
        .metrics
        .keys()
        .chain(&reg.imported_metrics)
        .cloned()
        .collect();
    assert_eq!(seen, all, "every registry metric is exported");
}

// ---- docs/attributes.md ---------------------------------------------------

/// Names egret owns: they must be in its registry.
fn egret_owned(name: &str) -> bool {
    name.starts_with("egret.") || name.starts_with("agent.") || name == sc::INVOCATION_ID
}

/// Backticked names in the first cell of every table row, with the row's
/// second cell when the table's header is `attribute | type | …`.
fn doc_rows(md: &str) -> Vec<(Vec<String>, Option<String>)> {
    let mut out = Vec::new();
    let mut typed = false;
    let mut header_next = true;
    for line in md.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            header_next = true;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if header_next {
            typed = cells.first() == Some(&"attribute") && cells.get(1) == Some(&"type");
            header_next = false;
            continue;
        }
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let names: Vec<String> = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        let ty = typed.then(|| cells.get(1).map(|s| s.to_string())).flatten();
        out.push((names, ty));
    }
    out
}

fn doc_type(cell: &str) -> &str {
    match cell.split_whitespace().next().unwrap_or("") {
        "bool" => "boolean",
        t => t,
    }
}

fn check_doc(md: &str, reg: &Registry) -> Vec<String> {
    let mut errors = Vec::new();
    let mut documented = BTreeSet::new();
    for (names, ty) in doc_rows(md) {
        for n in names {
            if let (Some(ty), Some(rt)) = (&ty, reg.defined.get(&n)) {
                if doc_type(ty) != rt {
                    errors.push(format!("{n}: attributes.md says {ty}, docs/semconv {rt}"));
                }
            }
            if egret_owned(&n)
                && !reg.defined.contains_key(&n)
                && !reg.events.contains(&n)
                && !reg.metrics.contains_key(&n)
            {
                errors.push(format!("{n}: in attributes.md but not in docs/semconv"));
            }
            documented.insert(n);
        }
    }
    for n in reg.defined.keys() {
        if !documented.contains(n) {
            errors.push(format!("{n}: in docs/semconv but not in attributes.md"));
        }
    }
    for n in reg.events.iter().chain(reg.metrics.keys()) {
        if !documented.contains(n) && !md.contains(&format!("`{n}`")) {
            errors.push(format!("{n}: in docs/semconv but not in attributes.md"));
        }
    }
    errors
}

#[test]
fn attributes_md_documents_the_registry() {
    let reg = load();
    let md = std::fs::read_to_string(repo().join("docs/attributes.md")).unwrap();
    let errors = check_doc(&md, &reg);
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // A row removed, a row added, a type changed: each is a finding.
    let broken = md
        .replace("| `egret.ttfb_ms` |", "| `egret.ttfb_gone` |")
        .replace(
            "| `egret.req.bytes` | int |",
            "| `egret.req.bytes` | string |",
        );
    let text = check_doc(&broken, &reg).join("\n");
    for want in [
        "egret.ttfb_ms: in docs/semconv but not in attributes.md",
        "egret.ttfb_gone: in attributes.md but not in docs/semconv",
        "egret.req.bytes: attributes.md says string, docs/semconv int",
    ] {
        assert!(text.contains(want), "{want} not reported:\n{text}");
    }
}

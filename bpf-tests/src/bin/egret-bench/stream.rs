//! Streaming bench: an SSE stream of 1,000 events from the mock, direct vs
//! through egret, on a warm keep-alive connection; added time to the first
//! event and to the end of the stream.
use crate::{
    peers::{helper, Egret, Mock, HOST},
    report::{table, Section, Target},
    util::{err, median, percentile, BenchResult, IoContext, TempDir},
    Params,
};

#[derive(Default)]
struct Samples {
    ttfb: Vec<f64>,
    ttlb: Vec<f64>,
}

fn probe(
    egret: Option<&Egret>,
    mock: &Mock,
    path: &str,
    reps: usize,
    into: &mut Samples,
) -> BenchResult<()> {
    let args = [
        "sse-probe",
        "--addr",
        &mock.addr.to_string(),
        "--sni",
        HOST,
        "--path",
        path,
        "--reps",
        &reps.to_string(),
        "--warmup",
        "2",
    ];
    let out = helper(egret.map(|e| &e.sandbox), &args)
        .output()
        .ctx(|| "run sse-probe".into())?;
    if !out.status.success() {
        return err(format!(
            "sse-probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| crate::util::BenchError::Msg(format!("probe said {line:?}: {e}")))?;
        if v["events"].as_u64() != Some(1000) {
            return err(format!("stream incomplete: {line}"));
        }
        into.ttfb
            .push(v["ttfb_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        into.ttlb
            .push(v["ttlb_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
    }
    Ok(())
}

pub fn run(p: &Params) -> BenchResult<Section> {
    let dir = TempDir::new("egret-bench-stream-")?;
    let mock = Mock::start(dir.path())?;
    let egret = Egret::start(&mock, "", None)?;
    let (rounds, reps) = if p.quick { (2, 3) } else { (10, 5) };
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let variants: Vec<(&str, &str, usize)> = if p.quick {
        vec![("back to back", "/sse/1000", rounds)]
    } else {
        vec![
            ("back to back", "/sse/1000", rounds),
            ("paced, 1 ms apart", "/sse/1000?interval_ms=1", 3),
        ]
    };
    for (label, path, rounds) in variants {
        let mut direct = Samples::default();
        let mut through = Samples::default();
        for r in 0..rounds {
            let reps = if path.contains("interval") { 2 } else { reps };
            if r % 2 == 0 {
                probe(None, &mock, path, reps, &mut direct)?;
                probe(Some(&egret), &mock, path, reps, &mut through)?;
            } else {
                probe(Some(&egret), &mock, path, reps, &mut through)?;
                probe(None, &mock, path, reps, &mut direct)?;
            }
        }
        let d_fb = median(&direct.ttfb);
        let d_lb = median(&direct.ttlb);
        let e_fb = median(&through.ttfb);
        let e_lb = median(&through.ttlb);
        eprintln!(
            "  stream {label}: TTFB direct {d_fb:.3} ms egret {e_fb:.3} ms; end direct {d_lb:.3} ms egret {e_lb:.3} ms"
        );
        for (who, s) in [("direct", &direct), ("egret", &through)] {
            rows.push(vec![
                label.to_owned(),
                who.to_owned(),
                s.ttfb.len().to_string(),
                format!("{:.3}", median(&s.ttfb)),
                format!("{:.3}", percentile(&s.ttfb, 90.0)),
                format!("{:.3}", median(&s.ttlb)),
                format!("{:.3}", percentile(&s.ttlb, 90.0)),
                if who == "egret" {
                    format!("{:+.3}", e_fb - d_fb)
                } else {
                    "—".into()
                },
                if who == "egret" {
                    format!("{:+.3}", e_lb - d_lb)
                } else {
                    "—".into()
                },
            ]);
        }
        targets.push(Target::at_most(
            &format!("added time to first event ({label}, median)"),
            e_fb - d_fb,
            1.0,
            " ms",
        ));
        if !path.contains("interval") {
            targets.push(Target::at_most(
                &format!("added time to the last event ({label}, median)"),
                e_lb - d_lb,
                1.0,
                " ms",
            ));
        }
    }
    let mut body = format!(
        "`GET https://{HOST}/sse/1000` (1,000 `data:` events, ≈50 KB, as fast as the mock \
         writes them{}). A probe (`egret-bench sse-probe`, \
         rustls, HTTP/1.1) keeps one connection, makes 2 unmeasured requests, then times \
         each request from just before writing it to the first `data:` byte (*TTFB*) and to \
         the end of the chunked body (*end*). Direct and egret probes alternate, {reps} \
         requests per probe; egret's probe runs in a sandbox cgroup (kernel redirect, TLS \
         termination, SSE parsing, body capture). Times in ms.\n\n",
        if p.quick {
            ""
        } else {
            "; the paced variant spaces them 1 ms apart (`?interval_ms=1`), so the stream lasts \
             ≈1.1 s and any buffering would show as a late first event"
        }
    );
    body.push_str(&table(
        &[
            "stream",
            "subject",
            "requests",
            "TTFB p50",
            "TTFB p90",
            "end p50",
            "end p90",
            "added TTFB",
            "added end",
        ],
        &rows,
    ));
    drop(egret);
    drop(mock);
    Ok(Section {
        id: "stream",
        title: "Streaming: SSE, 1,000 events".into(),
        body,
        targets,
    })
}

//! Timelines: bucket boundaries are multiples of the bucket size since the
//! epoch, and per-bucket figures add up to the window's totals.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{feed, ns, synthetic_flows, NOW_S};
use procflow_core::flow::FlowState;
use procflow_store::report::{run_report_at, Format, GroupBy, ReportArgs};
use procflow_store::timespec::rfc3339_s;
use procflow_store::Store;
use serde_json::{json, Value};

fn timeline(db: &Path, by: &[GroupBy], bucket: &str, format: Format, since: &str) -> String {
    let args = ReportArgs {
        db: db.to_path_buf(),
        by: by.to_vec(),
        format,
        timeline: true,
        bucket: Some(bucket.into()),
        since: since.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn bucket_boundaries_are_multiples_of_the_bucket_since_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let f = synthetic_flows().remove(1);
    let mut store = Store::open(&db).unwrap();
    // A minute boundary an hour ago; records 1 s before it, on it, 1 s before
    // the next, and on the next; each adds a distinct amount.
    let m = NOW_S - 3_600 - (NOW_S - 3_600).rem_euclid(60);
    let points = [
        (m - 1, 1u64),
        (m, 2),
        (m + 59, 4),
        (m + 60, 8),
        (m + 61, 16),
    ];
    let mut tx = 0;
    for (t, add) in points {
        tx += add;
        store
            .write(&[f.record(FlowState::Open, tx, 0, None)], ns(t))
            .unwrap();
    }
    let doc: Value =
        serde_json::from_str(&timeline(&db, &[GroupBy::Exe], "1m", Format::Json, "2h")).unwrap();
    assert_eq!(doc["bucket_seconds"], json!(60));
    let got: Vec<(i64, u64)> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["bucket_start"].as_i64().unwrap(),
                r["tx_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![(m - 60, 1), (m, 2 + 4), (m + 60, 8 + 16)]);
    for r in doc["rows"].as_array().unwrap() {
        let b = r["bucket_start"].as_i64().unwrap();
        assert_eq!(r["time"], json!(rfc3339_s(b)));
    }

    // 7 minutes do not divide an hour: boundaries still fall on multiples of
    // 420 s since the epoch.
    let doc: Value =
        serde_json::from_str(&timeline(&db, &[GroupBy::Exe], "7m", Format::Json, "2h")).unwrap();
    let mut want: HashMap<i64, u64> = HashMap::new();
    for (t, add) in points {
        let sample = t - t.rem_euclid(10);
        *want.entry(sample - sample.rem_euclid(420)).or_default() += add;
    }
    let got: HashMap<i64, u64> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["bucket_start"].as_i64().unwrap(),
                r["tx_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(got.keys().all(|b| b % 420 == 0), "{got:?}");
    assert_eq!(got, want);

    // Buckets narrower than a sample: each sample lands in the bucket of its start.
    let doc: Value =
        serde_json::from_str(&timeline(&db, &[GroupBy::Exe], "1s", Format::Json, "2h")).unwrap();
    let got: Vec<i64> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bucket_start"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![m - 10, m, m + 50, m + 60]);
}

#[test]
fn timeline_buckets_add_up_to_the_totals_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let flows = synthetic_flows();
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, &flows);
    let by = [GroupBy::Exe, GroupBy::Direction];

    let doc: Value = serde_json::from_str(&timeline(&db, &by, "1h", Format::Json, "24h")).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let mut per_group: HashMap<(Value, Value), u64> = HashMap::new();
    let mut last = i64::MIN;
    for r in rows {
        let b = r["bucket_start"].as_i64().unwrap();
        assert_eq!(b % 3_600, 0);
        assert!(b >= last, "rows not in time order");
        last = b;
        *per_group
            .entry((r["exe"].clone(), r["direction"].clone()))
            .or_default() += r["total_bytes"].as_u64().unwrap();
    }
    let mut want: HashMap<(Value, Value), u64> = HashMap::new();
    for f in &flows {
        let exe = if f.unowned { Value::Null } else { json!(f.exe) };
        let dir = json!(match f.direction {
            procflow_core::Direction::In => "in",
            procflow_core::Direction::Out => "out",
            procflow_core::Direction::Unknown => "unknown",
        });
        *want.entry((exe, dir)).or_default() += f.tx + f.rx;
    }
    assert_eq!(per_group, want);
    let all: u64 = flows.iter().map(|f| f.tx + f.rx).sum();
    assert_eq!(doc["total"]["total_bytes"], json!(all));

    let csv = timeline(&db, &by, "1h", Format::Csv, "24h");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "bucket_start,time,exe,exe_unknown,direction,tx_bytes,rx_bytes,total_bytes,\
         tx_packets,rx_packets,flows,flows_folded"
    );
    let csv_rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(csv_rows.len(), rows.len());
    for (c, j) in csv_rows.iter().zip(rows) {
        assert_eq!(c[0], j["bucket_start"].as_i64().unwrap().to_string());
        assert_eq!(c[1], j["time"].as_str().unwrap());
        assert_eq!(c[7], j["total_bytes"].as_u64().unwrap().to_string());
        assert_eq!(c[10], j["flows"].as_u64().unwrap().to_string());
    }
    let sum: u64 = csv_rows.iter().map(|c| c[7].parse::<u64>().unwrap()).sum();
    assert_eq!(sum, all);

    let table = timeline(&db, &by, "1h", Format::Table, "24h");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].ends_with("by exe, direction, per 1h"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("TIME (UTC)"), "{}", lines[1]);
    assert_eq!(lines.len(), rows.len() + 3);
    assert!(lines.last().unwrap().starts_with("TOTAL"));
}

#[test]
fn chart_is_an_svg_with_title_axes_and_legend() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let flows = synthetic_flows();
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, &flows);
    let svg_path = dir.path().join("traffic.svg");
    let args = ReportArgs {
        db: db.clone(),
        by: vec![GroupBy::Host],
        top: Some(3),
        chart: Some(svg_path.clone()),
        ..Default::default()
    };
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("wrote {}\n", svg_path.display())
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("Network traffic by host"));
    assert!(svg.contains("time (UTC)"));
    assert!(svg.contains("rate (KiB/s)"), "unit of the y axis");
    // Three groups and "other": four areas and four legend entries.
    assert_eq!(
        svg.matches("<path d=\"M").count(),
        4 + 1,
        "areas plus the axes"
    );
    assert!(svg.contains(">other</text>"));
    assert!(
        svg.contains(">10.0.0.53</text>"),
        "the largest host is in the legend"
    );

    // The same chart as PNG: the SVG drawn at twice its size, its text set
    // in a system font.
    let png_path = dir.path().join("traffic.png");
    let args = ReportArgs {
        chart: Some(png_path.clone()),
        ..args
    };
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("wrote {}\n", png_path.display())
    );
    let png = Png::read(&png_path);
    assert_eq!(
        (png.width, png.height),
        (2000, 1120),
        "twice the SVG's size"
    );
    // Text is drawn: its boxes hold dark pixels, while a margin with no text
    // (above the title) holds none. Without a font the text boxes stay white.
    let title = png.dark_pixels(90, 12, 400, 38);
    assert!(title > 1_000, "title \"Network traffic by host\": {title}");
    assert_eq!(png.dark_pixels(0, 0, 1000, 10), 0, "top margin");
    let x_label = png.dark_pixels(360, 522, 450, 542);
    assert!(x_label > 200, "x axis label \"time (UTC)\": {x_label}");
    let y_label = png.dark_pixels(10, 240, 30, 330);
    assert!(y_label > 200, "y axis label \"rate (KiB/s)\": {y_label}");
    let legend = png.dark_pixels(767, 90, 1000, 250);
    assert!(legend > 1_000, "legend labels and totals: {legend}");
    // Written through a temporary file that is gone afterwards.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("traffic") || n.starts_with(".traffic"))
        .collect();
    names.sort();
    assert_eq!(names, ["traffic.png", "traffic.svg"]);

    // Other names are refused up front, and nothing is written.
    let jpg = dir.path().join("traffic.jpg");
    let args = ReportArgs {
        chart: Some(jpg.clone()),
        ..args
    };
    let err = run_report_at(&args, NOW_S, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("must end in .svg or .png"), "{err}");
    assert!(!jpg.exists());
}

/// A decoded PNG chart (8-bit RGBA).
struct Png {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
}

impl Png {
    fn read(path: &Path) -> Png {
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "PNG signature");
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgba).unwrap();
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Rgba, png::BitDepth::Eight)
        );
        Png {
            width: info.width,
            height: info.height,
            rgba,
        }
    }

    /// Near-black pixels (text, axes) in a box given in SVG units.
    fn dark_pixels(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        let scale = self.width / 1000;
        let mut n = 0;
        for y in y0 * scale..y1 * scale {
            for x in x0 * scale..x1 * scale {
                let i = ((y * self.width + x) * 4) as usize;
                let p = &self.rgba[i..i + 3];
                if p.iter().all(|&c| c < 110) {
                    n += 1;
                }
            }
        }
        n
    }
}

#[test]
fn data_older_than_two_days_is_reported_from_the_hourly_totals() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut flows = synthetic_flows();
    let day = 86_400;
    // Five days ago, one flow every 10 minutes for 3 hours, each 1000 bytes sent.
    let base = NOW_S - 5 * day - (NOW_S - 5 * day).rem_euclid(3_600); // on the hour
    let mut store = Store::open(&db).unwrap();
    for (i, f) in flows.iter_mut().take(18).enumerate() {
        let t = base + i as i64 * 600 + 30;
        f.start_s = t;
        store
            .write(&[f.record(FlowState::Closed, 1_000, 10, Some(t))], ns(t))
            .unwrap();
    }
    store
        .apply_retention(std::time::Duration::from_secs(30 * day as u64), ns(NOW_S))
        .unwrap();
    let total = |since: i64, until: i64| -> u64 {
        let args = ReportArgs {
            db: db.clone(),
            format: Format::Json,
            since: rfc3339_s(since),
            until: Some(rfc3339_s(until)),
            ..Default::default()
        };
        let mut out = Vec::new();
        run_report_at(&args, NOW_S, &mut out).unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        doc["total"]["tx_bytes"].as_u64().unwrap()
    };
    assert_eq!(total(base - day, base + day), 18_000);
    assert_eq!(total(base + 3_600, base + 7_200), 6_000, "the second hour");
    // Hours count where they start: a window from the middle of the first
    // hour leaves it out, one that ends in the middle of the third keeps it.
    assert_eq!(total(base + 1_800, base + 2 * 3_600 + 60), 12_000);
    let doc: Value = serde_json::from_str(&timeline(
        &db,
        &[GroupBy::Exe],
        "1h",
        Format::Json,
        &rfc3339_s(base - 3_600),
    ))
    .unwrap();
    let hours: Vec<(i64, u64)> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["bucket_start"].as_i64().unwrap(),
                r["tx_bytes"].as_u64().unwrap(),
            )
        })
        .fold(Vec::new(), |mut v: Vec<(i64, u64)>, (b, tx)| {
            match v.last_mut() {
                Some(last) if last.0 == b => last.1 += tx,
                _ => v.push((b, tx)),
            }
            v
        });
    assert_eq!(
        hours,
        vec![(base, 6_000), (base + 3_600, 6_000), (base + 7_200, 6_000)]
    );
}

#[test]
fn hourly_totals_and_samples_give_the_same_figures() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let flows = synthetic_flows();
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, &flows);
    // A 10-minute timeline reads only samples; totals read hourly rows for
    // the whole hours of the window.
    let by = [GroupBy::Host, GroupBy::Port];
    let fine: Value =
        serde_json::from_str(&timeline(&db, &by, "10m", Format::Json, "24h")).unwrap();
    let mut fine_sums: HashMap<String, u64> = HashMap::new();
    for r in fine["rows"].as_array().unwrap() {
        *fine_sums
            .entry(format!("{}/{}", r["host"], r["port"]))
            .or_default() += r["total_bytes"].as_u64().unwrap();
    }
    let args = ReportArgs {
        db: db.clone(),
        by: by.to_vec(),
        format: Format::Json,
        since: "24h".into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    let coarse: Value = serde_json::from_slice(&out).unwrap();
    let coarse_sums: HashMap<String, u64> = coarse["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!("{}/{}", r["host"], r["port"]),
                r["total_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(fine_sums, coarse_sums);
}

#[test]
fn a_timeline_with_top_keeps_the_largest_groups_in_every_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let flows = synthetic_flows();
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, &flows);
    let args = ReportArgs {
        db: db.clone(),
        by: vec![GroupBy::Remote],
        format: Format::Json,
        timeline: true,
        bucket: Some("1h".into()),
        top: Some(2),
        ..Default::default()
    };
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let mut per_remote: HashMap<String, u64> = HashMap::new();
    for f in &flows {
        *per_remote.entry(f.remote.0.to_string()).or_default() += f.tx + f.rx;
    }
    let mut ranked: Vec<(String, u64)> = per_remote.into_iter().collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    let top: Vec<&str> = ranked[..2].iter().map(|(r, _)| r.as_str()).collect();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for r in doc["rows"].as_array().unwrap() {
        let remote = r["remote"].as_str().unwrap();
        assert!(top.contains(&remote), "{remote} is not in the top 2");
        *seen.entry(remote.to_string()).or_default() += r["total_bytes"].as_u64().unwrap();
    }
    for (remote, total) in &ranked[..2] {
        assert_eq!(seen[remote], *total, "{remote}");
    }
    let all: u64 = ranked.iter().map(|(_, t)| t).sum();
    assert_eq!(doc["total"]["total_bytes"], json!(all));
}

#[test]
fn an_empty_window_gives_empty_outputs_and_a_chart_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    drop(Store::open(&db).unwrap());
    for format in [Format::Table, Format::Json, Format::Csv] {
        let text = timeline(&db, &[GroupBy::Exe], "1m", format, "1h");
        match format {
            Format::Table => assert!(text.lines().last().unwrap().starts_with("TOTAL")),
            Format::Json => {
                let doc: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(doc["rows"], json!([]));
            }
            Format::Csv => assert_eq!(text.lines().count(), 1, "header only"),
        }
    }
    let svg = dir.path().join("empty.svg");
    let args = ReportArgs {
        db,
        chart: Some(svg.clone()),
        ..Default::default()
    };
    run_report_at(&args, NOW_S, &mut Vec::new()).unwrap();
    let text = std::fs::read_to_string(svg).unwrap();
    assert!(text.contains("no traffic in this window"));
}

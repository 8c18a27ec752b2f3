//! `--chart FILE.svg` or `--chart FILE.png`: a stacked-area chart of the top
//! groups over time, drawn as plain SVG (title, axes with units, legend).
//! A PNG is that same SVG rasterized with resvg, its text set in a font
//! found on the system (fontdb).
//!
//! Each time bucket is drawn as a flat step at the average rate of the
//! bucket (bytes sent plus received, divided by the bucket's width), so the
//! area under a group is its traffic.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use resvg::usvg::fontdb;

use crate::error::StoreError;
use crate::report::escape;
use crate::report::output::{by_name, human_bytes, human_span, key_cells};
use crate::report::query::{top_groups, Cell, Query, Row};
use crate::timespec::{bucket_start, human_time};

/// Groups drawn when `--top` is not given; the rest are summed as "other".
pub const DEFAULT_TOP: usize = 8;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 720.0;
const TOP: f64 = 80.0;
const BOTTOM: f64 = 490.0;

const COLORS: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#86bcb6",
];
const OTHER_COLOR: &str = "#bab0ac";

/// Pixels per SVG unit in a PNG: 2 makes the 1000 x 560 chart a crisp
/// 2000 x 1120 image (also on high-density screens and when zoomed).
pub const PNG_SCALE: f32 = 2.0;

/// Families tried, in order, for the chart's text in a PNG (the SVG names
/// "DejaVu Sans, Helvetica, Arial, sans-serif"); "sans-serif" is pointed at
/// the first one installed.
const SANS_FAMILIES: [&str; 6] = [
    "DejaVu Sans",
    "Liberation Sans",
    "Noto Sans",
    "FreeSans",
    "Arial",
    "Helvetica",
];

/// What a chart file is written as, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartFormat {
    Svg,
    Png,
}

/// Refuses chart files this build cannot write, before any work is done.
pub fn check_path(path: &Path) -> Result<ChartFormat, StoreError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => Ok(ChartFormat::Svg),
        Some("png") => Ok(ChartFormat::Png),
        _ => Err(StoreError::invalid(
            "chart file",
            &path.display().to_string(),
            "the file name must end in .svg or .png",
        )),
    }
}

/// Draws the chart of `rows` and writes it to `path`, as SVG or PNG by the
/// file name. The file is written under a temporary name in the same
/// directory and renamed into place, so `path` never holds half a chart;
/// when drawing fails (a PNG with no fonts on the system) nothing is written.
pub fn write(path: &Path, q: &Query, rows: &[Row], top: usize) -> Result<(), StoreError> {
    let svg = render(q, rows, top);
    let bytes = match check_path(path)? {
        ChartFormat::Svg => svg.into_bytes(),
        ChartFormat::Png => {
            let mut fonts = fontdb::Database::new();
            fonts.load_system_fonts();
            let fonts = chart_fonts(fonts).map_err(|reason| StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, reason),
            })?;
            render_png(&svg, fonts).map_err(|reason| StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(reason),
            })?
        }
    };
    write_atomically(path, &bytes)
}

/// Makes `fonts` (the system's) able to set the chart's text: "sans-serif"
/// and the serif fallback point at a family that is installed. Refuses an
/// empty database, which would give a PNG with no text at all.
fn chart_fonts(mut fonts: fontdb::Database) -> Result<Arc<fontdb::Database>, String> {
    let installed = |name: &str| {
        fonts
            .query(&fontdb::Query {
                families: &[fontdb::Family::Name(name)],
                ..Default::default()
            })
            .is_some()
    };
    let family = SANS_FAMILIES
        .iter()
        .find(|f| installed(f))
        .map(|f| f.to_string())
        .or_else(|| {
            // None of the usual ones: any upright, regular, proportional face.
            let pick = fonts
                .faces()
                .find(|f| {
                    f.style == fontdb::Style::Normal
                        && f.weight == fontdb::Weight::NORMAL
                        && !f.monospaced
                })
                .or_else(|| fonts.faces().next())?;
            pick.families.first().map(|(name, _)| name.clone())
        })
        .ok_or_else(|| {
            "no fonts found on this system (in fontconfig's font directories, or /usr/share/fonts) \
             to draw the chart's text; install one, e.g. the Debian package fonts-dejavu-core \
             (`apt-get install fonts-dejavu-core`), or write FILE.svg instead; nothing was written"
                .to_string()
        })?;
    fonts.set_sans_serif_family(family.clone());
    fonts.set_serif_family(family);
    Ok(Arc::new(fonts))
}

/// Rasterizes `svg` at [`PNG_SCALE`] with `fonts` and encodes it as PNG.
fn render_png(svg: &str, fonts: Arc<fontdb::Database>) -> Result<Vec<u8>, String> {
    let family = fonts.family_name(&fontdb::Family::SansSerif).to_string();
    let opt = resvg::usvg::Options {
        font_family: family,
        fontdb: fonts,
        ..Default::default()
    };
    let tree =
        resvg::usvg::Tree::from_str(svg, &opt).map_err(|e| format!("drawing the chart: {e}"))?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(PNG_SCALE)
        .ok_or("drawing the chart: bad size")?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or("drawing the chart: could not allocate the image")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| format!("encoding the chart as PNG: {e}"))
}

/// Writes `bytes` to `path` through a temporary file next to it, renamed
/// into place once complete. The temporary file has a random name and is
/// created with `O_CREAT | O_EXCL | O_NOFOLLOW` (mode 0600, like the history
/// it is drawn from), so nothing planted at a name procflow would use (a
/// symbolic link in a shared directory) can make it write anywhere else; the
/// rename replaces `path` itself, never what a link there points to.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let (tmp, mut file) = {
        let mut tries = 0;
        loop {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{:016x}.tmp", random_u64()));
            let tmp = path.with_file_name(tmp_name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => {
                    tries += 1;
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: tmp,
                        source: e,
                    })
                }
            }
        }
    };
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// 64 bits no other user can predict: std's hasher keys come from the
/// operating system's random source (and differ for every `RandomState`).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    // Keep the end: it is the telling part of paths and host names.
    let tail: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}

/// A "nice" step (1, 2 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Unit for rates up to `max` bytes per second: (divisor, name).
fn rate_unit(max: f64) -> (f64, &'static str) {
    let units = [
        (1.0, "B/s"),
        (1024.0, "KiB/s"),
        (1048576.0, "MiB/s"),
        (1073741824.0, "GiB/s"),
        (1099511627776.0, "TiB/s"),
    ];
    let mut pick = units[0];
    for u in units {
        if max >= u.0 {
            pick = u;
        }
    }
    pick
}

/// Steps for time ticks, in seconds.
const TIME_STEPS: [i64; 16] = [
    10, 30, 60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600, 43_200, 86_400, 172_800,
    604_800,
];

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws the chart of `rows` (a timeline, `q.bucket` set) as SVG.
pub fn render(q: &Query, rows: &[Row], top: usize) -> String {
    let width_s = q.bucket.unwrap_or(60).max(1);
    let start = bucket_start(q.since, width_s);
    let n = ((q.until - start + width_s - 1) / width_s).max(1) as usize;
    let end = start + n as i64 * width_s;

    let groups = top_groups(rows, top.max(1));
    let has_other = rows.iter().any(|r| !groups.contains(&r.key));
    let layers = groups.len() + usize::from(has_other);
    let mut values = vec![vec![0f64; n]; layers];
    let mut totals = vec![0u64; layers];
    for r in rows {
        let Some(b) = r.bucket else { continue };
        let i = ((b - start) / width_s) as usize;
        if i >= n {
            continue;
        }
        let layer = groups
            .iter()
            .position(|g| *g == r.key)
            .unwrap_or(groups.len());
        values[layer][i] += r.total() as f64 / width_s as f64;
        totals[layer] += r.total();
    }
    let mut stacked = values;
    for l in 1..layers {
        let (below, this) = stacked.split_at_mut(l);
        for (v, b) in this[0].iter_mut().zip(&below[l - 1]) {
            *v += b;
        }
    }
    let max = stacked
        .last()
        .map_or(0.0, |v| v.iter().cloned().fold(0.0, f64::max));
    let (div, unit) = rate_unit(max);
    let step = nice_step(max / div / 5.0);
    let y_top = if max > 0.0 {
        ((max / div) / step).ceil().max(1.0) * step
    } else {
        5.0
    };
    let x = |t: i64| LEFT + (t - start) as f64 / (end - start) as f64 * (RIGHT - LEFT);
    let y = |v: f64| BOTTOM - (v / div) / y_top * (BOTTOM - TOP);

    let by: Vec<&str> = q.by.iter().map(|g| by_name(*g)).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="32" font-size="20" font-weight="bold">Network traffic by {}</text>"#,
        escape::xml(&by.join(", "))
    );
    let others = if has_other { ", the rest as other" } else { "" };
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="56" font-size="13" fill="#444">{} to {} UTC · sent + received, average per {} · top {}{}</text>"##,
        human_time(q.since, false),
        human_time(q.until, false),
        human_span(width_s),
        top,
        others
    );

    // Grid and y axis.
    let mut v = 0.0;
    while v <= y_top + step / 2.0 {
        let yy = BOTTOM - v / y_top * (BOTTOM - TOP);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{RIGHT}" y2="{yy:.1}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            yy + 4.0,
            fmt_num(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(24 {:.1}) rotate(-90)" font-size="13" text-anchor="middle">rate ({unit})</text>"#,
        (TOP + BOTTOM) / 2.0
    );

    // Areas, bottom layer first.
    for l in 0..layers {
        let color = if l < groups.len() {
            COLORS[l % COLORS.len()]
        } else {
            OTHER_COLOR
        };
        let mut d = String::new();
        for (i, top) in stacked[l].iter().enumerate() {
            let (x0, x1) = (
                x(start + i as i64 * width_s),
                x(start + (i as i64 + 1) * width_s),
            );
            let yy = y(*top);
            let _ = write!(
                d,
                "{}{x0:.1},{yy:.1} L{x1:.1},{yy:.1} ",
                if i == 0 { "M" } else { "L" }
            );
        }
        for i in (0..n).rev() {
            let (x0, x1) = (
                x(start + i as i64 * width_s),
                x(start + (i as i64 + 1) * width_s),
            );
            let yy = if l == 0 { BOTTOM } else { y(stacked[l - 1][i]) };
            let _ = write!(d, "L{x1:.1},{yy:.1} L{x0:.1},{yy:.1} ");
        }
        let _ = writeln!(s, r#"<path d="{}Z" fill="{color}" stroke="none"/>"#, d);
    }

    // Axes and time ticks.
    let _ = writeln!(
        s,
        r##"<path d="M{LEFT},{TOP} L{LEFT},{BOTTOM} L{RIGHT},{BOTTOM}" fill="none" stroke="#333"/>"##
    );
    let span = end - start;
    let tstep = TIME_STEPS
        .iter()
        .copied()
        .find(|st| span / st <= 8)
        .unwrap_or(TIME_STEPS[TIME_STEPS.len() - 1]);
    let with_date = span > 86_400 || bucket_start(start, 86_400) != bucket_start(end - 1, 86_400);
    let mut t = bucket_start(start, tstep);
    if t < start {
        t += tstep;
    }
    while t <= end {
        let xx = x(t);
        let full = human_time(t, tstep < 60);
        // "YYYY-MM-DD HH:MM[:SS]": keep "MM-DD HH:MM" or "HH:MM".
        let label = if tstep >= 86_400 && t % 86_400 == 0 {
            full[5..10].to_string()
        } else if with_date {
            full[5..].to_string()
        } else {
            full[11..].to_string()
        };
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{BOTTOM}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
            BOTTOM + 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            BOTTOM + 20.0,
            escape::xml(&label)
        );
        t += tstep;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle">time (UTC)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 46.0
    );

    // Legend: top of the stack first.
    let lx = RIGHT + 25.0;
    let _ = writeln!(
        s,
        r#"<text x="{lx}" y="{:.1}" font-size="13" font-weight="bold">{} (total)</text>"#,
        TOP - 4.0,
        escape::xml(&by.join(", "))
    );
    for (row, l) in (0..layers).rev().enumerate() {
        let (label, color) = if l < groups.len() {
            (legend_label(q, &groups[l]), COLORS[l % COLORS.len()])
        } else {
            ("other".to_string(), OTHER_COLOR)
        };
        let ly = TOP + 12.0 + row as f64 * 38.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{ly:.1}" width="14" height="14" fill="{color}"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            lx + 22.0,
            ly + 11.0,
            escape::xml(&shorten(&label, 34))
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#555">{}</text>"##,
            lx + 22.0,
            ly + 26.0,
            human_bytes(totals[l])
        );
    }
    if layers == 0 {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="16" fill="#777" text-anchor="middle">no traffic in this window</text>"##,
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn legend_label(q: &Query, key: &[Cell]) -> String {
    key_cells(&q.by, key)
        .into_iter()
        .map(|c| if c == "-" { "(unknown)".to_string() } else { c })
        .collect::<Vec<_>>()
        .join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_and_png_are_chosen_by_name_and_other_names_refused() {
        assert_eq!(check_path(Path::new("a.svg")).unwrap(), ChartFormat::Svg);
        assert_eq!(check_path(Path::new("a.SVG")).unwrap(), ChartFormat::Svg);
        assert_eq!(check_path(Path::new("a.png")).unwrap(), ChartFormat::Png);
        assert_eq!(check_path(Path::new("d/a.PNG")).unwrap(), ChartFormat::Png);
        for bad in ["a", "a.jpg", "a.svgz", "png"] {
            let e = check_path(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("must end in .svg or .png"), "{bad}: {e}");
        }
    }

    #[test]
    fn no_fonts_is_refused_naming_the_package_to_install() {
        let e = chart_fonts(fontdb::Database::new()).unwrap_err();
        assert!(e.contains("fonts-dejavu-core"), "{e}");
    }

    #[test]
    fn sans_serif_points_at_an_installed_family() {
        let mut fonts = fontdb::Database::new();
        fonts.load_system_fonts();
        let fonts = chart_fonts(fonts).expect("the test machine has fonts-dejavu-core");
        let sans = fonts.family_name(&fontdb::Family::SansSerif);
        assert_eq!(sans, "DejaVu Sans");
        assert!(fonts
            .query(&fontdb::Query {
                families: &[fontdb::Family::SansSerif],
                ..Default::default()
            })
            .is_some());
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(37.0), 50.0);
        assert_eq!(nice_step(0.03), 0.05);
    }
}

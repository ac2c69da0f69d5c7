//! The loss and bits-per-byte curves as a small self-contained SVG (written by hand: no font or
//! rendering dependencies). Two panels: training loss and validation bpb against step.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::TrainError;

/// One panel: title and `(x, y)` points.
pub struct Series<'a> {
    pub title: &'a str,
    pub points: &'a [(f64, f64)],
}

/// Draw one panel at `(x0, y0)` of size `w × h` into `svg`, its line in `color`.
fn panel(svg: &mut String, s: &Series, color: &str, x0: f64, y0: f64, w: f64, h: f64) {
    let (l, r, t, b) = (x0 + 55.0, x0 + w - 15.0, y0 + 30.0, y0 + h - 35.0);
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"##,
        (l + r) / 2.0,
        y0 + 18.0,
        xml_escape(s.title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        r - l,
        b - t
    );
    let pts: Vec<(f64, f64)> = s
        .points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    if pts.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="middle" fill="#888">no data yet</text>"##,
            (l + r) / 2.0,
            (t + b) / 2.0
        );
        return;
    }
    let (mut xmin, mut xmax) = (f64::MAX, f64::MIN);
    let (mut ymin, mut ymax) = (f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    if ymax <= ymin {
        ymax = ymin + 1.0;
    }
    let px = |x: f64| l + (x - xmin) / (xmax - xmin) * (r - l);
    let py = |y: f64| b - (y - ymin) / (ymax - ymin) * (b - t);
    // steps are whole numbers: over a short run two ticks can round to the same one, labelled once
    let mut last_x_label = String::new();
    for i in 0..=4 {
        let fy = ymin + (ymax - ymin) * i as f64 / 4.0;
        let fx = xmin + (xmax - xmin) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{:.3}</text>"##,
            l - 4.0,
            py(fy) + 3.0,
            fy
        );
        let x_label = format!("{fx:.0}");
        if x_label != last_x_label {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{x_label}</text>"##,
                px(fx),
                b + 14.0,
            );
            last_x_label = x_label;
        }
        let _ = write!(
            svg,
            r##"<line x1="{l}" x2="{r}" y1="{0}" y2="{0}" stroke="#eee"/>"##,
            py(fy)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">step</text>"##,
        (l + r) / 2.0,
        b + 28.0
    );
    let mut d = String::new();
    for (i, &(x, y)) in pts.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            px(x),
            py(y)
        );
    }
    let _ = write!(
        svg,
        r##"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"##
    );
    if pts.len() < 30 {
        for &(x, y) in &pts {
            let _ = write!(
                svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"##,
                px(x),
                py(y)
            );
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One panel as a standalone inline SVG (for HTML reports), its line in `color`.
pub fn chart_svg(title: &str, points: &[(f64, f64)], color: &str) -> String {
    let (w, h) = (420.0, 260.0);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" role="img" aria-label="{}"><rect width="100%" height="100%" fill="white"/>"##,
        xml_escape(title)
    );
    let series = Series { title, points };
    panel(&mut svg, &series, color, 0.0, 0.0, w, h);
    svg.push_str("</svg>");
    svg
}

/// Write the panels side by side to `path` (atomically).
pub fn write_svg(path: &Path, panels: &[Series]) -> Result<(), TrainError> {
    let (w, h) = (420.0, 300.0);
    let total_w = w * panels.len().max(1) as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{h}" viewBox="0 0 {total_w} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"##
    );
    for (i, s) in panels.iter().enumerate() {
        panel(&mut svg, s, "#c0392b", i as f64 * w, 0.0, w, h);
    }
    svg.push_str("</svg>\n");
    kiln_data::write_atomic(path, svg.as_bytes()).map_err(|e| TrainError::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_short_run_labels_each_step_once() {
        let mut svg = String::new();
        let pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.3), (4.0, 0.2)];
        let s = Series {
            title: "reward",
            points: &pts,
        };
        panel(&mut svg, &s, "#000", 0.0, 0.0, 420.0, 300.0);
        // ticks at 1, 1.75, 2.5, 3.25, 4 round to 1 2 2 3 4 (2 would be labelled twice)
        let labels: Vec<&str> = svg
            .split(r#"text-anchor="middle">"#)
            .skip(1)
            .map(|t| t.split('<').next().unwrap_or(""))
            .filter(|t| t.parse::<f64>().is_ok())
            .collect();
        assert_eq!(labels, ["1", "2", "3", "4"], "{svg}");
    }

    #[test]
    fn writes_valid_looking_svg() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        let pts = [(1.0, 5.0), (2.0, 4.0), (3.0, 3.5)];
        write_svg(
            &p,
            &[
                Series {
                    title: "train loss",
                    points: &pts,
                },
                Series {
                    title: "val bpb",
                    points: &[],
                },
            ],
        )
        .unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("<path d=\"M") && s.contains("no data yet"));
    }
}

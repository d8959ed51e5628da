//! A small SVG chart of per-round metrics (losses on the left axis, accuracy on the right), stored
//! with each finished run so people can look rather than read.

use serde_json::Value;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 50.0;

fn series(history: &[Value], name: &str) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|entry| Some((entry["round"].as_f64()?, entry[name].as_f64()?)))
        .collect()
}

fn polyline(points: &[(f64, f64)], x_max: f64, y_max: f64, colour: &str) -> String {
    if points.is_empty() {
        return String::new();
    }
    let plot_w = WIDTH - 2.0 * MARGIN;
    let plot_h = HEIGHT - 2.0 * MARGIN;
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let px = MARGIN
                + if x_max > 1.0 {
                    (x - 1.0) / (x_max - 1.0) * plot_w
                } else {
                    plot_w / 2.0
                };
            let py = HEIGHT - MARGIN - (y / y_max).clamp(0.0, 1.0) * plot_h;
            format!("{px:.1},{py:.1}")
        })
        .collect();
    let dots: String = coords
        .iter()
        .map(|c| {
            let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
            format!(r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#)
        })
        .collect();
    format!(
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>{dots}"#,
        coords.join(" ")
    )
}

/// The chart for `history` (entries with `round` and any of `train_loss`, `eval_loss`, `eval_acc`).
pub fn svg(history: &[Value]) -> String {
    let train = series(history, "train_loss");
    let eval = series(history, "eval_loss");
    let acc = series(history, "eval_acc");
    let x_max = history
        .iter()
        .filter_map(|e| e["round"].as_f64())
        .fold(1.0, f64::max);
    let loss_max = train
        .iter()
        .chain(&eval)
        .map(|(_, y)| *y)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let (left, right, bottom, top) = (MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN, MARGIN);
    out.push_str(&format!(
        r#"<path d="M{left},{top} L{left},{bottom} L{right},{bottom} L{right},{top}" fill="none" stroke="black"/>"#
    ));
    out.push_str(&format!(
        r#"<text x="{left}" y="{}" >loss (max {loss_max:.3})</text>"#,
        top - 10.0
    ));
    out.push_str(&format!(
        r#"<text x="{}" y="{}" text-anchor="end">accuracy (0-1)</text>"#,
        right,
        top - 10.0
    ));
    out.push_str(&format!(
        r#"<text x="{}" y="{}" text-anchor="middle">round (1-{x_max})</text>"#,
        WIDTH / 2.0,
        HEIGHT - 15.0
    ));
    out.push_str(&polyline(&train, x_max, loss_max, "#1f77b4"));
    out.push_str(&polyline(&eval, x_max, loss_max, "#ff7f0e"));
    out.push_str(&polyline(&acc, x_max, 1.0, "#2ca02c"));
    for (i, (label, colour)) in [
        ("train_loss", "#1f77b4"),
        ("eval_loss", "#ff7f0e"),
        ("eval_acc", "#2ca02c"),
    ]
    .iter()
    .enumerate()
    {
        let y = top + 15.0 + 16.0 * i as f64;
        out.push_str(&format!(
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{label}</text>"#,
            left + 10.0,
            y - 9.0,
            left + 25.0,
            y
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_chart_has_a_line_per_metric() {
        let history = vec![
            json!({"round": 1, "train_loss": 2.0, "eval_loss": 1.8, "eval_acc": 0.3}),
            json!({"round": 2, "train_loss": 1.5, "eval_loss": 1.4, "eval_acc": 0.5}),
        ];
        let svg = svg(&history);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}

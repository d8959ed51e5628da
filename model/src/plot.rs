//! A chart of per-round metrics (losses on the left axis, accuracy on the right), stored with each
//! finished run as SVG and PNG so people can look rather than read. Drawn with plotters: axes with
//! ticks and labels, a legend. The PNG's text is set in DejaVu Sans, cut down to ASCII (10 KiB)
//! and compiled in, so no font needs to be installed where the broker runs.

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// DejaVu Sans, printable ASCII only (see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ASCII.ttf");

/// The font family the chart's text is set in.
const FAMILY: &str = "sans-serif";

/// Registers [`FONT`] as [`FAMILY`] once per process.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the chart font is unreadable: the PNG chart will have no text");
        }
    });
}

/// Size of the chart in pixels.
const SIZE: (u32, u32) = (720, 405);

/// The largest metric value drawn (by magnitude): beyond it a point is left out, so that an axis
/// never spans a range its arithmetic overflows (plotters loops forever on an infinite one).
const MAX_VALUE: f64 = 1e12;

/// The last round drawn.
const MAX_ROUND: f64 = 1e6;

/// Most round labels on the x axis.
const MAX_ROUND_LABELS: usize = 10;

/// The series and their colours (matplotlib's first three, as Flower's examples plot them).
const SERIES: [(&str, RGBColor, Axis); 3] = [
    ("train_loss", RGBColor(0x1f, 0x77, 0xb4), Axis::Loss),
    ("eval_loss", RGBColor(0xff, 0x7f, 0x0e), Axis::Loss),
    ("eval_acc", RGBColor(0x2c, 0xa0, 0x2c), Axis::Accuracy),
];

/// Which y axis a series is read against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Axis {
    Loss,
    Accuracy,
}

/// One series to draw.
struct Line {
    name: &'static str,
    colour: RGBColor,
    axis: Axis,
    points: Vec<(f64, f64)>,
}

/// A series' points; its metric may be named with dashes too (`train-loss`), as some apps do.
fn series(history: &[Value], name: &str) -> Vec<(f64, f64)> {
    let dashed = name.replace('_', "-");
    history
        .iter()
        .filter_map(|entry| {
            let value = entry[name].as_f64().or_else(|| entry[&dashed].as_f64())?;
            Some((entry["round"].as_f64()?, value))
        })
        .filter(|(x, y)| (0.0..=MAX_ROUND).contains(x) && y.is_finite() && y.abs() <= MAX_VALUE)
        .collect()
}

/// The chart for `history` (entries with `round` and any of `train_loss`, `eval_loss`,
/// `eval_acc`) as SVG.
pub fn svg(history: &[Value]) -> String {
    register_font();
    let mut out = String::new();
    let drawn = draw(
        history,
        SVGBackend::with_string(&mut out, SIZE).into_drawing_area(),
    );
    if let Err(error) = drawn {
        // Drawing in memory fails only on a plotters bug; a run's results are not lost to it.
        tracing::warn!(%error, "the metrics chart could not be drawn");
        out.clear();
    }
    out
}

/// The same chart as a PNG image (empty if it could not be drawn).
pub fn png(history: &[Value]) -> Vec<u8> {
    register_font();
    let (width, height) = SIZE;
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    let drawn = draw(
        history,
        BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area(),
    );
    let encoded = drawn.and_then(|()| {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
        Ok(out)
    });
    encoded.unwrap_or_else(|error| {
        tracing::warn!(%error, "the metrics chart could not be drawn");
        Vec::new()
    })
}

fn draw<DB: DrawingBackend>(
    history: &[Value],
    root: DrawingArea<DB, Shift>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let lines: Vec<Line> = SERIES
        .iter()
        .map(|&(name, colour, axis)| Line {
            name,
            colour,
            axis,
            points: series(history, name),
        })
        .collect();
    let last_round = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let loss_max = lines
        .iter()
        .filter(|line| line.axis == Axis::Loss)
        .flat_map(|line| line.points.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    // One round still gets an axis around it.
    let rounds = 0.5..last_round + 0.5;
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Metrics per round", (FAMILY, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .right_y_label_area_size(55)
        .build_cartesian_2d(rounds.clone(), 0.0..loss_max)?
        .set_secondary_coord(rounds, 0.0..1.0);
    let round_labels = (last_round as usize).clamp(1, MAX_ROUND_LABELS);
    chart
        .configure_mesh()
        .x_desc("Round")
        .y_desc("Loss")
        .x_labels(round_labels)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("Accuracy")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    for Line {
        name,
        colour,
        axis,
        points,
    } in lines
    {
        if points.is_empty() {
            continue;
        }
        let style = colour.stroke_width(2);
        let dots = points
            .iter()
            .map(move |&p| Circle::new(p, 3, colour.filled()));
        let drawn = match axis {
            Axis::Loss => {
                chart.draw_series(dots)?;
                chart.draw_series(LineSeries::new(points, style))?
            }
            Axis::Accuracy => {
                chart.draw_secondary_series(dots)?;
                chart.draw_secondary_series(LineSeries::new(points, style))?
            }
        };
        drawn
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_chart_has_axes_labels_and_a_line_per_metric() {
        let history = vec![
            json!({"round": 1, "train_loss": 2.0, "eval_loss": 1.8, "eval_acc": 0.3}),
            json!({"round": 2, "train_loss": 1.5, "eval_loss": 1.4, "eval_acc": 0.5}),
            json!({"round": 3, "train_loss": 1.2, "eval_loss": 1.3, "eval_acc": 0.6}),
        ];
        let svg = svg(&history);
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "Round",
            "Loss",
            "Accuracy",
            "train_loss",
            "eval_loss",
            "eval_acc",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        for (name, colour, _) in SERIES {
            let stroke = format!(
                "stroke=\"#{:02X}{:02X}{:02X}\"",
                colour.0, colour.1, colour.2
            );
            // The series' line and its legend sample.
            let lines = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
                .count();
            assert_eq!(lines, 2, "{name}: {svg}");
        }
    }

    #[test]
    fn the_png_is_an_image_of_the_charts_size_with_text_and_lines() {
        let history = vec![
            json!({"round": 1, "train_loss": 2.0, "eval_acc": 0.3}),
            json!({"round": 2, "train_loss": 1.5, "eval_acc": 0.5}),
        ];
        let bytes = png(&history);
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((frame.width, frame.height), SIZE);
        let pixels = &pixels[..frame.buffer_size()];
        // Every series colour is drawn, and so is black text beyond the axes' lines.
        for (name, colour, _) in SERIES {
            let drawn = pixels
                .chunks(3)
                .any(|p| p == [colour.0, colour.1, colour.2]);
            assert_eq!(drawn, name != "eval_loss", "{name}");
        }
        let dark = pixels
            .chunks(3)
            .filter(|p| p.iter().all(|&c| c < 64))
            .count();
        assert!(dark > 2_000, "text and axes: {dark} dark pixels");
    }

    #[test]
    fn one_round_and_missing_or_non_finite_values_still_draw() {
        let history = vec![json!({"round": 1, "train_loss": f64::NAN, "eval_acc": 0.5})];
        let svg = svg(&history);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(
            svg.contains("eval_acc") && !svg.contains("train_loss"),
            "{svg}"
        );
    }

    #[test]
    fn values_whose_axis_would_overflow_are_left_out_and_the_chart_is_drawn() {
        let history = vec![
            json!({"round": 1, "train_loss": 1.7e308, "eval_acc": 0.5}),
            json!({"round": 1e300, "train_loss": 1.0}),
            json!({"round": 2, "train_loss": 0.5, "eval_acc": 0.6}),
        ];
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(svg(&history)));
        let svg = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("drawn in time");
        assert!(svg.starts_with("<svg"), "{svg}");
        // train_loss keeps round 2 only, eval_acc both rounds.
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
    }

    #[test]
    fn metrics_named_with_dashes_draw_as_their_series() {
        let history = vec![json!({"round": 1, "train-loss": 1.0, "eval-acc": 0.5})];
        let svg = svg(&history);
        assert!(
            svg.contains("train_loss") && svg.contains("eval_acc") && !svg.contains("eval_loss"),
            "{svg}"
        );
    }
}

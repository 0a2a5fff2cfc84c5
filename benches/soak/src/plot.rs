//! The report's plot: RSS, p99 delivery latency and deliveries/s over time, fault
//! windows shaded (plotters, PNG, text in DejaVu Sans from Debian's fonts-dejavu-core).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::{Fault, Row};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws `rows` into a PNG at `path`.
pub fn draw(path: &Path, rows: &[Row], faults: &[Fault]) -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font"))?;
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let t_max = rows.last().map_or(1.0, |r| r.t / 60.0).max(0.1);
    let faults: Vec<(f64, f64)> = faults
        .iter()
        .filter(|f| f.skipped.is_none())
        .map(|f| (f.start / 60.0, f.end.max(f.start + 1.0) / 60.0))
        .collect();
    let shade = RGBColor(255, 165, 0).mix(0.3).filled();
    let caption = |label: &str| format!("{label}  (shaded: faults)");

    // RSS and deliveries/s on linear axes.
    for (panel, label, f, color) in [
        (
            &panels[0],
            "server RSS (MiB)",
            (|r: &Row| r.rss_mib) as fn(&Row) -> f64,
            RGBColor(31, 119, 180),
        ),
        (
            &panels[2],
            "deliveries/s",
            |r: &Row| r.deliveries,
            RGBColor(44, 160, 44),
        ),
    ] {
        let y_max = rows.iter().map(f).fold(0.0, f64::max).max(1.0) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .caption(caption(label), ("sans-serif", 20))
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(
            faults
                .iter()
                .map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y_max)], shade)),
        )?;
        chart.draw_series(LineSeries::new(
            rows.iter().map(|r| (r.t / 60.0, f(r))),
            color.stroke_width(2),
        ))?;
    }
    // p99 on a log axis: a fault's seconds and the steady milliseconds in one view.
    let y_max = rows.iter().map(|r| r.p99_ms).fold(1.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&panels[1])
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .caption(
            caption("p99 delivery latency per interval (ms, log)"),
            ("sans-serif", 20),
        )
        .build_cartesian_2d(0.0..t_max, (1.0..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(
        faults
            .iter()
            .map(|&(a, b)| Rectangle::new([(a, 1.0), (b, y_max)], shade)),
    )?;
    chart.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.t / 60.0, r.p99_ms.max(1.0))),
        RGBColor(214, 39, 40).stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

//! How the CLI prints rows: an aligned table, CSV, or JSON.

use std::io::Write;

use clap::ValueEnum;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Prints rows as an aligned table, CSV, or (for serializable rows) JSON.
pub fn output<T: serde::Serialize>(
    format: Format,
    header: &[&str],
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?,
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(header)?;
            for row in rows {
                w.write_record(cells(row))?;
            }
            w.flush()?;
        }
        Format::Table => {
            let table: Vec<Vec<String>> = rows.iter().map(&cells).collect();
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in &table {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cells: Vec<&str>| -> String {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            writeln!(out, "{}", line(header.to_vec()))?;
            for row in &table {
                writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
            }
            if table.is_empty() {
                writeln!(out, "(none)")?;
            }
        }
    }
    Ok(())
}

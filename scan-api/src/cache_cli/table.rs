//! Plain-text tables for the terminal, and the human forms of sizes, durations and rates they
//! show. Small on purpose: columns padded to their widest cell (counted in characters), numbers
//! aligned right, two spaces between columns, no trailing spaces. No table crate is in the
//! dependency tree, and this is all the CLI needs.

use std::fmt::Write as _;
use std::time::Duration;

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table: an optional header row, then rows of cells.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Option<Vec<String>>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row; `align` per column (missing ones are `Left`).
    pub(crate) fn new(header: &[&str], align: &[Align]) -> Self {
        Self {
            header: Some(header.iter().map(|h| (*h).to_owned()).collect()),
            align: align.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A two-column table of labels and values, without a header.
    pub(crate) fn pairs() -> Self {
        Self::default()
    }

    /// The same table with `align` per column.
    pub(crate) fn aligned(mut self, align: &[Align]) -> Self {
        self.align = align.to_vec();
        self
    }

    /// Adds a row.
    pub(crate) fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the table has no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, each line ending in `\n`.
    pub(crate) fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in &lines {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                match self.align.get(i).copied().unwrap_or(Align::Left) {
                    Align::Right => {
                        text.extend(std::iter::repeat_n(' ', pad));
                        text.push_str(cell);
                    }
                    Align::Left => {
                        text.push_str(cell);
                        text.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        }
        out
    }
}

/// `1234` bytes as `1.2 KiB`; below 1 KiB as `512 B`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration to the second (to the millisecond below one): `1h 2m 3s`, `4m 58s`, `12s`,
/// `250 ms`.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{} ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// A ratio as a percentage with one decimal.
pub(crate) fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_and_numbers_aligned_right() {
        let mut t = Table::new(&["CATEGORY", "HITS"], &[Align::Left, Align::Right]);
        t.row(["analysis", "2"]).row(["image_metadata", "12345"]);
        assert_eq!(
            t.render(),
            "CATEGORY         HITS\n\
             analysis            2\n\
             image_metadata  12345\n"
        );
        let mut p = Table::pairs();
        p.row(["mode", "redis"]).row(["hit rate", "50.0%"]);
        assert_eq!(p.render(), "mode      redis\nhit rate  50.0%\n");
        assert!(Table::pairs().is_empty());
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_secs(298)), "4m 58s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h 2m 3s");
        assert_eq!(percent(0.875), "87.5%");
    }
}

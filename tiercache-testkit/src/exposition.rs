//! A strict parser of the Prometheus text exposition format (version 0.0.4), for tests that
//! scrape `/metrics`.
//!
//! Strict where exporters go wrong: every sample belongs to a family declared by a `# TYPE`
//! line before it (a histogram's samples are `_bucket` with an `le` label, `_sum` and
//! `_count`; a summary's the name with `quantile`, `_sum` and `_count`), names and label names
//! are valid, label values are quoted with only `\\`, `\"` and `\n` escaped, values are floats
//! (or `+Inf`, `-Inf`, `NaN`), a family is declared once and its lines are contiguous, and no
//! series (name and labels) appears twice. A maintained crate would do too, but the parsers on
//! crates.io are lenient (they accept samples without a `# TYPE`), which is what a test of an
//! exporter must catch.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (for a histogram, with its `_bucket`, `_sum` or `_count` suffix).
    pub name: String,
    /// Its labels, by name.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Each family's type (`counter`, `gauge`, `histogram`, `summary`, `untyped`), by name.
    pub types: BTreeMap<String, String>,
    /// Each family's help text, by name.
    pub help: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample named `name` whose labels include every pair of `labels`, if
    /// exactly one matches; `None` if none does; panics if several do.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} series: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// The names of every family declared.
    pub fn families(&self) -> BTreeSet<&str> {
        self.types.keys().map(String::as_str).collect()
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_name(s) && !s.contains(':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("{s:?} is not a sample value")),
    }
}

/// `{a="x",b="y"}` (the braces included) into labels; returns the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s
        .strip_prefix('{')
        .ok_or_else(|| format!("expected `{{` in {s:?}"))?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("a label without `=` in {s:?}"))?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} is not quoted in {s:?}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("invalid escape {other:?} in {s:?}")),
                },
                Some((_, '\n')) => return Err(format!("raw newline in a label value: {s:?}")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} given twice in {s:?}"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label {name} in {s:?}"));
        }
    }
}

/// The family a sample named `name` belongs to, given the families declared.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(kind) = types.get(base)
            && (kind == "histogram" || (kind == "summary" && suffix != "_bucket"))
        {
            return Some(base);
        }
    }
    None
}

/// Parses `text` strictly (see the module docs); `Err` names the line and what is wrong.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut seen_series = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (keyword, name, rest) = (words.next(), words.next(), words.next());
            match (keyword, name) {
                (Some("TYPE"), Some(name)) => {
                    let kind = rest.unwrap_or("");
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if !is_name(name) {
                        return Err(at("invalid metric name".into()));
                    }
                    if out.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("family declared twice".into()));
                    }
                }
                (Some("HELP"), Some(name)) => {
                    if !is_name(name) {
                        return Err(at("invalid metric name".into()));
                    }
                    out.help
                        .insert(name.to_owned(), rest.unwrap_or("").to_owned());
                }
                _ => {} // another comment
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at("invalid metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(at(format!("invalid timestamp {ts:?}")));
        }
        if fields.next().is_some() {
            return Err(at("trailing text".into()));
        }
        let family = family_of(name, &out.types)
            .ok_or_else(|| at(format!("sample {name} has no `# TYPE` before it")))?
            .to_owned();
        let kind = &out.types[&family];
        if kind == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("a bucket without `le`".into()));
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(at(format!("the lines of {family} are not contiguous")));
            }
            if let Some(previous) = current.replace(family.clone()) {
                finished.insert(previous);
            }
        }
        if !seen_series.insert((name.to_owned(), labels.clone())) {
            return Err(at("series repeated".into()));
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_exposition_parses() {
        let text = "# HELP c_total Things.\n# TYPE c_total counter\nc_total{a=\"x\\\"y\",b=\"\"} 3\n\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 0.3\nh_seconds_count 2\n# TYPE g gauge\ng -1.5e3 1700000000\n";
        let e = parse(text).unwrap();
        assert_eq!(e.value("c_total", &[("a", "x\"y")]), Some(3.0));
        assert_eq!(e.value("h_seconds_count", &[]), Some(2.0));
        assert_eq!(e.value("g", &[]), Some(-1500.0));
        assert_eq!(e.help["c_total"], "Things.");
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            "c_total 1\n",                                                // no TYPE
            "# TYPE c counter\nc{a=x} 1\n",                               // unquoted
            "# TYPE c counter\nc 1 2 3\n",                                // trailing text
            "# TYPE c counter\nc one\n",                                  // not a number
            "# TYPE c counter\nc 1\nc 2\n",                               // repeated series
            "# TYPE h histogram\nh_bucket 1\n",                           // bucket without le
            "# TYPE c counter\n# TYPE c counter\n",                       // declared twice
            "# TYPE c counter\n# TYPE d gauge\nc 1\nd 1\nc{a=\"b\"} 1\n", // not contiguous
            "# TYPE c counter\nc{a=\"\\t\"} 1\n",                         // bad escape
            "# TYPE 1c counter\n",                                        // bad name
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}

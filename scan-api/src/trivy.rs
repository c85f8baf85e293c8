//! Parsing and validation of Trivy JSON reports (`trivy image --format json`, SchemaVersion 2).
//!
//! The API accepts a raw Trivy report and stores a [`NewScan`]. This module is the only place
//! that knows Trivy's JSON: it tells "not JSON at all" (400) from "JSON, but not a usable
//! report" (422, naming the offending field by path), keeps only vulnerability findings,
//! deduplicates them, counts them per severity and works out the image name and the
//! tags/digests the scan covered. Trivy omits almost every empty field, so missing, `null` and
//! empty values are treated alike, and unknown fields are ignored so newer Trivy versions keep
//! working. It never panics, whatever the input.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::model::{Finding, ImageVersion, NewScan, Severity, SeverityCounts, VersionKind};

/// Why a request body could not be turned into a [`NewScan`].
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The body is not JSON at all -> the API answers 400.
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not a Trivy SchemaVersion 2 report -> 422. `field` is a path like
    /// `Results[0].Vulnerabilities[3].Severity` ("$" for the whole document).
    #[error("field `{field}`: {message}")]
    Invalid {
        /// Path of the offending field, `$` for the whole document.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ReportError {
    ReportError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The parts of a Trivy report this service reads; every other field is ignored.
// Also the request body's schema in the OpenAPI document (`TrivyReport`, `crate::openapi`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase", expecting = "a Trivy report object")]
#[schema(as = TrivyReport)]
pub(crate) struct RawReport {
    #[serde(default)]
    artifact_name: Option<String>,
    #[serde(default, rename = "ReportID")]
    report_id: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    metadata: Option<RawMetadata>,
    #[serde(default)]
    results: Option<Vec<Option<RawResult>>>,
}

/// `Metadata`.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase", expecting = "a metadata object")]
#[schema(as = TrivyMetadata)]
struct RawMetadata {
    #[serde(default, rename = "OS")]
    os: Option<RawOs>,
    #[serde(default, rename = "ImageID")]
    image_id: Option<String>,
    #[serde(default)]
    repo_tags: Option<Vec<Option<String>>>,
    #[serde(default)]
    repo_digests: Option<Vec<Option<String>>>,
}

/// `Metadata.OS`.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase", expecting = "an OS object")]
#[schema(as = TrivyOs)]
struct RawOs {
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// One entry of `Results`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase", expecting = "a result object")]
#[schema(as = TrivyResult)]
struct RawResult {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    vulnerabilities: Option<Vec<RawVulnerability>>,
}

/// One entry of `Results[].Vulnerabilities`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase", expecting = "a vulnerability object")]
#[schema(as = TrivyVulnerability)]
struct RawVulnerability {
    #[serde(default, rename = "VulnerabilityID")]
    vulnerability_id: Option<String>,
    #[serde(default, rename = "PkgID")]
    pkg_id: Option<String>,
    #[serde(default)]
    pkg_name: Option<String>,
    #[serde(default)]
    pkg_path: Option<String>,
    #[serde(default)]
    installed_version: Option<String>,
    #[serde(default)]
    fixed_version: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default, rename = "PrimaryURL")]
    primary_url: Option<String>,
}

/// Parses and validates a Trivy SchemaVersion 2 JSON report.
///
/// Returns [`ReportError::NotJson`] when `body` is not JSON and [`ReportError::Invalid`] when it
/// is JSON but not a usable report.
pub fn parse_report(body: &[u8]) -> Result<NewScan, ReportError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ReportError::NotJson(e.to_string()))?;
    check_top_level(&value)?;
    if let Some(path) = find_nul(&value, "") {
        // PostgreSQL cannot store NUL in text, and no real report contains one.
        return Err(invalid(path, "contains a NUL character (\\u0000)"));
    }

    let raw: RawReport = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "$".to_owned() } else { path };
        invalid(field, e.into_inner().to_string())
    })?;

    let artifact_name = match raw.artifact_name {
        None => return Err(invalid("ArtifactName", "is required")),
        Some(name) if name.trim().is_empty() => {
            return Err(invalid("ArtifactName", "must be a non-empty string"));
        }
        Some(name) => name,
    };
    let created_at = non_empty(raw.created_at)
        .map(|s| parse_timestamp(&s))
        .transpose()
        .map_err(|message| invalid("CreatedAt", message))?;

    let metadata = raw.metadata.unwrap_or_default();
    let os = metadata.os.unwrap_or_default();
    let tags = non_empty_entries(metadata.repo_tags);
    let digests = non_empty_entries(metadata.repo_digests);

    let image = tags.iter().chain(&digests).next().map_or_else(
        || split_reference(&artifact_name).0,
        |r| split_reference(r).0,
    );
    if image.len() > MAX_IMAGE_NAME {
        let source = if tags.is_empty() && digests.is_empty() {
            "ArtifactName"
        } else {
            "Metadata.RepoTags"
        };
        return Err(invalid(
            source,
            format!(
                "image name is {} bytes; at most {MAX_IMAGE_NAME} are accepted",
                image.len()
            ),
        ));
    }
    let versions: Vec<ImageVersion> = tags
        .iter()
        .chain(&digests)
        .map(String::as_str)
        .chain(std::iter::once(artifact_name.as_str()))
        .filter_map(|reference| match split_reference(reference) {
            (repo, Some(version)) if repo == image => Some(version),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if versions.len() > MAX_VERSIONS {
        return Err(invalid(
            "Metadata.RepoTags",
            format!(
                "{} tags and digests; at most {MAX_VERSIONS} are accepted",
                versions.len()
            ),
        ));
    }

    let (findings, counts) = collect_findings(raw.results.unwrap_or_default())?;

    Ok(NewScan {
        image,
        artifact_name,
        image_id: non_empty(metadata.image_id),
        os_family: non_empty(os.family),
        os_name: non_empty(os.name),
        created_at,
        report_id: non_empty(raw.report_id),
        versions,
        findings,
        counts,
    })
}

/// Longest accepted image name (Docker allows 255 for a repository path; the registry host adds
/// a little).
pub const MAX_IMAGE_NAME: usize = 512;

/// Most tags and digests accepted in one report.
pub const MAX_VERSIONS: usize = 1000;

/// The path of the first string (or object key) holding a NUL character, if any.
fn find_nul(value: &Value, path: &str) -> Option<String> {
    let here = || {
        if path.is_empty() {
            "$".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(here()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(child)
            } else {
                find_nul(v, &child)
            }
        }),
        _ => None,
    }
}

/// Checks what typed deserialization cannot say well: an object with `SchemaVersion` 2.
fn check_top_level(value: &Value) -> Result<(), ReportError> {
    let top = match value {
        Value::Object(top) => top,
        Value::Array(_) => {
            return Err(invalid(
                "$",
                "expected an object (a Trivy SchemaVersion 2 report), found an array \
                 (Trivy before 0.20 wrote bare arrays; they are not supported)",
            ));
        }
        other => {
            return Err(invalid(
                "$",
                format!(
                    "expected an object (a Trivy SchemaVersion 2 report), found {}",
                    describe(other)
                ),
            ));
        }
    };
    match top.get("SchemaVersion") {
        None | Some(Value::Null) => Err(invalid("SchemaVersion", "is required")),
        Some(v) if v.as_u64() == Some(2) => Ok(()),
        Some(v) => Err(invalid(
            "SchemaVersion",
            format!(
                "unsupported schema version {}; only 2 is supported",
                describe(v)
            ),
        )),
    }
}

/// A short description of a JSON value for error messages (never echoes a large input).
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() <= 32 => format!("{s:?}"),
        Value::String(_) => "a long string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Validates the vulnerabilities of every result, deduplicates them and counts them.
fn collect_findings(
    results: Vec<Option<RawResult>>,
) -> Result<(Vec<Finding>, SeverityCounts), ReportError> {
    type Key = (String, String, String, String, Option<String>);
    let mut seen: HashSet<Key> = HashSet::new();
    let mut findings = Vec::new();
    let mut counts = SeverityCounts::default();

    for (i, result) in results.into_iter().enumerate() {
        let Some(result) = result else { continue };
        let target = result.target.unwrap_or_default();
        for (j, vuln) in result
            .vulnerabilities
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = |name: &str| format!("Results[{i}].Vulnerabilities[{j}].{name}");
            let vulnerability_id = required(vuln.vulnerability_id, || at("VulnerabilityID"))?;
            let pkg_name = required(vuln.pkg_name, || at("PkgName"))?;
            let severity = match non_empty(vuln.severity) {
                None => return Err(invalid(at("Severity"), "is required")),
                Some(s) => Severity::parse(&s).ok_or_else(|| {
                    invalid(
                        at("Severity"),
                        format!(
                            "unknown severity {}; expected one of UNKNOWN, LOW, MEDIUM, HIGH, \
                             CRITICAL",
                            describe(&Value::String(s))
                        ),
                    )
                })?,
            };
            let pkg_id = non_empty(vuln.pkg_id);
            let pkg_path = non_empty(vuln.pkg_path);
            let installed_version = vuln.installed_version.unwrap_or_default();

            let key = (
                target.clone(),
                vulnerability_id.clone(),
                pkg_id.clone().unwrap_or_else(|| pkg_name.clone()),
                installed_version.clone(),
                pkg_path.clone(),
            );
            if !seen.insert(key) {
                continue;
            }
            counts.add(severity);
            findings.push(Finding {
                target: target.clone(),
                vulnerability_id,
                pkg_name,
                pkg_id,
                pkg_path,
                installed_version,
                fixed_version: non_empty(vuln.fixed_version),
                severity,
                status: non_empty(vuln.status),
                title: non_empty(vuln.title),
                primary_url: non_empty(vuln.primary_url),
            });
        }
    }
    Ok((findings, counts))
}

/// A required string: present, not null, not blank.
fn required(value: Option<String>, field: impl FnOnce() -> String) -> Result<String, ReportError> {
    match value {
        None => Err(invalid(field(), "is required")),
        Some(s) if s.trim().is_empty() => Err(invalid(field(), "must be a non-empty string")),
        Some(s) => Ok(s),
    }
}

/// `None` for missing, null, empty and blank strings.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.trim().is_empty())
}

/// The non-blank entries of an optional list of optional strings, trimmed.
fn non_empty_entries(list: Option<Vec<Option<String>>>) -> Vec<String> {
    list.unwrap_or_default()
        .into_iter()
        .flatten()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses an RFC 3339 timestamp with any offset and any number of fraction digits.
fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    let parsed = DateTime::parse_from_rfc3339(s).or_else(|e| {
        // chrono keeps at most nanoseconds; drop further fraction digits and retry.
        truncate_fraction(s)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .ok_or(e)
    });
    let t = parsed
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 timestamp ({e})"))?;
    // Offsets can push the UTC time out of the four-digit years the timestamp format holds.
    if !(1..=9999).contains(&chrono::Datelike::year(&t)) {
        return Err("is outside the years 0001 to 9999 in UTC".into());
    }
    Ok(t)
}

/// `s` with its seconds fraction cut to 9 digits, if it has a longer one.
fn truncate_fraction(s: &str) -> Option<String> {
    let dot = s.find('.')?;
    let digits = s
        .get(dot + 1..)?
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits <= 9 {
        return None;
    }
    let head = s.get(..dot + 1 + 9)?;
    let tail = s.get(dot + 1 + digits..)?;
    Some(format!("{head}{tail}"))
}

/// Splits an image reference into (repository, version): "repo:tag" -> (repo, Tag tag);
/// "repo@sha256:abc" -> (repo, Digest "sha256:abc"); "repo:tag@sha256:x" -> (repo, Digest);
/// registry ports are not tags ("localhost:5000/app" -> ("localhost:5000/app", None)).
/// Returns None for the version when there is none.
///
/// Anything that is not a reference (a tarball path such as `images/alpine.tar.gz`) comes back
/// whole with no version: a suffix only counts as a tag if it is a valid Docker tag.
pub fn split_reference(reference: &str) -> (String, Option<ImageVersion>) {
    let reference = reference.trim();
    if let Some((name, digest)) = reference.split_once('@') {
        let name = name.trim();
        let digest = digest.trim();
        if name.is_empty() {
            return (reference.to_owned(), None);
        }
        if digest.is_empty() {
            return split_reference(name);
        }
        let repo = split_tag(name).map_or(name, |(repo, _)| repo);
        return (
            repo.to_owned(),
            Some(ImageVersion {
                version: digest.to_owned(),
                kind: VersionKind::Digest,
            }),
        );
    }
    match split_tag(reference) {
        Some((repo, tag)) => (
            repo.to_owned(),
            Some(ImageVersion {
                version: tag.to_owned(),
                kind: VersionKind::Tag,
            }),
        ),
        None => (reference.to_owned(), None),
    }
}

/// `name:tag` -> (name, tag) when the part after the last `:` is a Docker tag
/// (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, so it contains no `/` and a registry port is no tag).
fn split_tag(name: &str) -> Option<(&str, &str)> {
    let (repo, tag) = name.rsplit_once(':')?;
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    (first_ok && rest_ok && tag.len() <= 128 && !repo.is_empty()).then_some((repo, tag))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn fixtures_dir() -> PathBuf {
        std::env::var("TRIVY_FIXTURES").map_or_else(
            |_| {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../shared/fixtures/trivy"
                ))
            },
            PathBuf::from,
        )
    }

    const TRIVY_TEST_IMAGES: &str = "ghcr.io/aquasecurity/trivy-test-images";

    /// (file stem, CRITICAL, HIGH, MEDIUM, LOW, image, tag)
    const EXPECTED: [(&str, u32, u32, u32, u32, &str, &str); 15] = [
        ("alpine-3.10", 0, 0, 4, 0, TRIVY_TEST_IMAGES, "alpine-310"),
        (
            "alpine-3.9-os-undetected-no-results",
            0,
            0,
            0,
            0,
            TRIVY_TEST_IMAGES,
            "alpine-39",
        ),
        ("amazonlinux-2", 0, 0, 1, 1, TRIVY_TEST_IMAGES, "amazon-2"),
        (
            "busybox-cargo-no-os",
            0,
            1,
            1,
            0,
            TRIVY_TEST_IMAGES,
            "busybox-with-lockfile",
        ),
        ("centos-7", 0, 0, 1, 2, TRIVY_TEST_IMAGES, "centos-7"),
        (
            "debian-9-stretch",
            0,
            0,
            4,
            1,
            TRIVY_TEST_IMAGES,
            "debian-stretch",
        ),
        (
            "debian-10-fluentd-gemspec",
            1,
            1,
            0,
            0,
            TRIVY_TEST_IMAGES,
            "fluentd-multiple-lockfiles",
        ),
        (
            "debian-11-spring4shell-jar",
            1,
            0,
            0,
            0,
            TRIVY_TEST_IMAGES,
            "spring4shell-jre11",
        ),
        (
            "distroless-base-debian-9",
            0,
            0,
            2,
            2,
            TRIVY_TEST_IMAGES,
            "distroless-base",
        ),
        (
            "juice-shop-v10.2.0-alpine-node",
            25,
            128,
            67,
            16,
            "bkimminich/juice-shop",
            "v10.2.0",
        ),
        (
            "juice-shop-v12.10.2-alpine-node",
            28,
            100,
            48,
            6,
            "bkimminich/juice-shop",
            "v12.10.2",
        ),
        (
            "rockylinux-8",
            0,
            0,
            1,
            0,
            TRIVY_TEST_IMAGES,
            "rockylinux-8",
        ),
        (
            "sle-micro-5.4-zero-vulns",
            0,
            0,
            0,
            0,
            TRIVY_TEST_IMAGES,
            "sle-micro-rancher-5.4_ndb",
        ),
        (
            "ubi-7-redhat-python-pkg",
            0,
            1,
            0,
            1,
            TRIVY_TEST_IMAGES,
            "ubi-7",
        ),
        ("ubuntu-18.04", 0, 0, 4, 1, TRIVY_TEST_IMAGES, "ubuntu-1804"),
    ];

    #[test]
    fn fixtures_parse_with_expected_counts_and_images() {
        let dir = fixtures_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("SKIPPED: Trivy fixtures not found at {}", dir.display());
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut checked = 0;
        for path in &files {
            let body = std::fs::read(path).unwrap();
            let scan = parse_report(&body)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            assert_eq!(scan.counts.total() as usize, scan.findings.len());
            let stem = path.file_stem().unwrap().to_string_lossy();
            let Some(&(_, c, h, m, l, image, tag)) = EXPECTED.iter().find(|e| e.0 == stem) else {
                continue;
            };
            checked += 1;
            let counts = scan.counts;
            assert_eq!(
                (
                    counts.critical,
                    counts.high,
                    counts.medium,
                    counts.low,
                    counts.unknown
                ),
                (c, h, m, l, 0),
                "{stem}"
            );
            assert_eq!(scan.image, image, "{stem}");
            let tags: Vec<&str> = scan
                .versions
                .iter()
                .filter(|v| v.kind == VersionKind::Tag)
                .map(|v| v.version.as_str())
                .collect();
            assert_eq!(tags, [tag], "{stem}");
            let digests: Vec<&ImageVersion> = scan
                .versions
                .iter()
                .filter(|v| v.kind == VersionKind::Digest)
                .collect();
            if image == TRIVY_TEST_IMAGES {
                // Scanned from a tarball: no digest, and the ArtifactName is not the image.
                assert!(digests.is_empty(), "{stem}");
                assert!(scan.artifact_name.ends_with(".tar.gz"), "{stem}");
            } else {
                assert_eq!(digests.len(), 1, "{stem}");
                assert!(digests[0].version.starts_with("sha256:"), "{stem}");
                assert_eq!(digests[0].version.len(), 7 + 64, "{stem}");
            }
            assert!(scan.created_at.is_some(), "{stem}");
            assert!(scan.image_id.is_some(), "{stem}");
        }
        assert_eq!(
            checked,
            EXPECTED.len(),
            "some expected fixtures are missing"
        );
    }

    fn minimal() -> Value {
        json!({
            "SchemaVersion": 2,
            "ArtifactName": "registry.example.com/team/app:v1.2.3",
            "Results": [{
                "Target": "registry.example.com/team/app:v1.2.3 (alpine 3.19.1)",
                "Class": "os-pkgs",
                "Type": "alpine",
                "Vulnerabilities": [{
                    "VulnerabilityID": "CVE-2024-00001",
                    "PkgName": "libfern",
                    "InstalledVersion": "1.0.0-r0",
                    "Severity": "HIGH"
                }]
            }]
        })
    }

    fn parse_value(v: &Value) -> Result<NewScan, ReportError> {
        parse_report(v.to_string().as_bytes())
    }

    #[track_caller]
    fn assert_invalid(v: &Value, field: &str, message_part: &str) {
        match parse_value(v) {
            Err(ReportError::Invalid { field: f, message }) => {
                assert_eq!(f, field, "message: {message}");
                assert!(
                    message.contains(message_part),
                    "message {message:?} lacks {message_part:?}"
                );
            }
            other => panic!("expected Invalid {field}, got {other:?}"),
        }
    }

    #[test]
    fn minimal_report_parses() {
        let scan = parse_value(&minimal()).unwrap();
        assert_eq!(scan.image, "registry.example.com/team/app");
        assert_eq!(
            scan.versions,
            [ImageVersion {
                version: "v1.2.3".into(),
                kind: VersionKind::Tag
            }]
        );
        assert_eq!(scan.counts.high, 1);
        assert_eq!(scan.findings[0].installed_version, "1.0.0-r0");
        assert_eq!(scan.findings[0].fixed_version, None);
        assert_eq!(scan.created_at, None);
        assert_eq!(scan.os_family, None);
    }

    #[test]
    fn not_json() {
        for body in [&b"{"[..], b"", b"hello", b"{\"a\":1} x", b"\xff\xfe"] {
            assert!(
                matches!(parse_report(body), Err(ReportError::NotJson(_))),
                "{body:?}"
            );
        }
        let e = parse_report(b"{").unwrap_err();
        assert!(e.to_string().starts_with("request body is not valid JSON"));
    }

    #[test]
    fn top_level_must_be_an_object() {
        assert_invalid(&json!([]), "$", "expected an object");
        assert_invalid(&json!("x"), "$", "expected an object");
        assert_invalid(&json!(null), "$", "expected an object");
    }

    #[test]
    fn schema_version() {
        let mut v = minimal();
        v["SchemaVersion"] = json!(1);
        assert_invalid(&v, "SchemaVersion", "unsupported schema version 1; only 2");
        v["SchemaVersion"] = json!("2");
        assert_invalid(&v, "SchemaVersion", "unsupported schema version \"2\"");
        v["SchemaVersion"] = json!(2.5);
        assert_invalid(&v, "SchemaVersion", "unsupported schema version");
        v["SchemaVersion"] = json!(null);
        assert_invalid(&v, "SchemaVersion", "is required");
        v.as_object_mut().unwrap().remove("SchemaVersion");
        assert_invalid(&v, "SchemaVersion", "is required");
        let e = parse_value(&v).unwrap_err();
        assert_eq!(e.to_string(), "field `SchemaVersion`: is required");
    }

    #[test]
    fn artifact_name_required() {
        let mut v = minimal();
        v["ArtifactName"] = json!("");
        assert_invalid(&v, "ArtifactName", "non-empty");
        v["ArtifactName"] = json!(null);
        assert_invalid(&v, "ArtifactName", "is required");
        v["ArtifactName"] = json!(7);
        assert_invalid(&v, "ArtifactName", "invalid type: integer `7`");
        v.as_object_mut().unwrap().remove("ArtifactName");
        assert_invalid(&v, "ArtifactName", "is required");
    }

    #[test]
    fn type_errors_name_the_path() {
        let mut v = minimal();
        v["Metadata"] = json!({"RepoTags": [5]});
        assert_invalid(
            &v,
            "Metadata.RepoTags[0]",
            "invalid type: integer `5`, expected a string",
        );
        let mut v = minimal();
        v["Results"][0]["Vulnerabilities"] = json!({"a": 1});
        assert_invalid(
            &v,
            "Results[0].Vulnerabilities",
            "invalid type: map, expected a sequence",
        );
        let mut v = minimal();
        v["Results"][0]["Vulnerabilities"][0]["FixedVersion"] = json!(["1.0"]);
        assert_invalid(
            &v,
            "Results[0].Vulnerabilities[0].FixedVersion",
            "invalid type",
        );
        let mut v = minimal();
        v["Results"] = json!("nope");
        assert_invalid(&v, "Results", "invalid type: string");
    }

    #[test]
    fn severity_and_required_vulnerability_fields() {
        let mut v = minimal();
        v["Results"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"Target": "secrets", "Class": "secret"}));
        v["Results"][1]["Vulnerabilities"][0]["Severity"] = json!("SEVERE");
        assert_invalid(
            &v,
            "Results[1].Vulnerabilities[0].Severity",
            "unknown severity \"SEVERE\"",
        );
        v["Results"][1]["Vulnerabilities"][0]["Severity"] = json!("critical");
        assert_eq!(parse_value(&v).unwrap().counts.critical, 1);
        v["Results"][1]["Vulnerabilities"][0]["Severity"] = json!("");
        assert_invalid(&v, "Results[1].Vulnerabilities[0].Severity", "is required");

        let mut v = minimal();
        v["Results"][0]["Vulnerabilities"][0]
            .as_object_mut()
            .unwrap()
            .remove("VulnerabilityID");
        assert_invalid(
            &v,
            "Results[0].Vulnerabilities[0].VulnerabilityID",
            "is required",
        );
        let mut v = minimal();
        v["Results"][0]["Vulnerabilities"][0]["PkgName"] = json!("");
        assert_invalid(&v, "Results[0].Vulnerabilities[0].PkgName", "non-empty");
    }

    #[test]
    fn missing_null_and_empty_are_the_same() {
        let mut v = minimal();
        v["Results"][0]["Vulnerabilities"][0]["InstalledVersion"] = json!(null);
        v["Results"][0]["Vulnerabilities"][0]["FixedVersion"] = json!("");
        v["Results"][0]["Vulnerabilities"][0]["PkgID"] = json!(null);
        v["ReportID"] = json!("");
        v["CreatedAt"] = json!(null);
        v["Metadata"] = json!({"RepoTags": [""], "RepoDigests": null, "OS": null, "ImageID": ""});
        v["Results"]
            .as_array_mut()
            .unwrap()
            .push(json!({"Target": "", "Class": "custom", "Vulnerabilities": null}));
        let scan = parse_value(&v).unwrap();
        let f = &scan.findings[0];
        assert_eq!(f.installed_version, "");
        assert_eq!(
            (f.fixed_version.as_deref(), f.pkg_id.as_deref()),
            (None, None)
        );
        assert_eq!(scan.report_id, None);
        assert_eq!(scan.image_id, None);
        assert_eq!(scan.image, "registry.example.com/team/app");
        assert_eq!(scan.counts.total(), 1);

        let mut v = minimal();
        v["Results"] = json!(null);
        assert_eq!(parse_value(&v).unwrap().findings, []);
    }

    #[test]
    fn duplicate_findings_are_counted_once() {
        let mut v = minimal();
        let vuln = v["Results"][0]["Vulnerabilities"][0].clone();
        let vulns = v["Results"][0]["Vulnerabilities"].as_array_mut().unwrap();
        vulns.push(vuln.clone());
        // Same ID and package under another PkgPath: a distinct finding.
        let mut other_path = vuln.clone();
        other_path["PkgPath"] = json!("srv/app/node_modules/libfern/package.json");
        vulns.push(other_path);
        // Same again, in another target: distinct too.
        v["Results"]
            .as_array_mut()
            .unwrap()
            .push(json!({"Target": "Node.js", "Vulnerabilities": [vuln]}));
        let scan = parse_value(&v).unwrap();
        assert_eq!(scan.findings.len(), 3);
        assert_eq!(scan.counts.high, 3);
    }

    #[test]
    fn created_at_formats() {
        let cases = [
            ("2021-08-25T12:20:30.000000005Z", 1_629_894_030, 5),
            ("2024-10-28T15:18:13.38Z", 1_730_128_693, 380_000_000),
            ("2024-10-28T17:18:13+02:00", 1_730_128_693, 0),
            (
                "2024-10-28T15:18:13.1234567891234Z",
                1_730_128_693,
                123_456_789,
            ),
        ];
        for (s, secs, nanos) in cases {
            let mut v = minimal();
            v["CreatedAt"] = json!(s);
            let t = parse_value(&v).unwrap().created_at.unwrap();
            assert_eq!(
                (t.timestamp(), t.timestamp_subsec_nanos()),
                (secs, nanos),
                "{s}"
            );
        }
        for bad in [
            "yesterday",
            "2024-10-28",
            "2024-13-01T00:00:00Z",
            "2024-10-28T15:18:13",
        ] {
            let mut v = minimal();
            v["CreatedAt"] = json!(bad);
            assert_invalid(&v, "CreatedAt", "RFC 3339");
        }
    }

    #[test]
    fn image_name_and_versions() {
        // Digest-only scan: no RepoTags, ArtifactName is repo@digest.
        let mut v = minimal();
        v["ArtifactName"] = json!("localhost:5000/team/app@sha256:abc");
        v["Metadata"] = json!({"RepoDigests": ["localhost:5000/team/app@sha256:abc"]});
        let scan = parse_value(&v).unwrap();
        assert_eq!(scan.image, "localhost:5000/team/app");
        assert_eq!(
            scan.versions,
            [ImageVersion {
                version: "sha256:abc".into(),
                kind: VersionKind::Digest
            }]
        );

        // Several tags and digests; those of other repositories are left out; sorted, deduplicated.
        let mut v = minimal();
        v["ArtifactName"] = json!("images/app.tar");
        v["Metadata"] = json!({
            "RepoTags": ["", "r.example.com/a:v2", "r.example.com/a:latest", "r.example.com/b:v9", "r.example.com/a:v2"],
            "RepoDigests": ["r.example.com/a@sha256:ff", "r.example.com/b@sha256:00"],
        });
        let scan = parse_value(&v).unwrap();
        assert_eq!(scan.image, "r.example.com/a");
        let versions: Vec<(&str, VersionKind)> = scan
            .versions
            .iter()
            .map(|v| (v.version.as_str(), v.kind))
            .collect();
        assert_eq!(
            versions,
            [
                ("latest", VersionKind::Tag),
                ("sha256:ff", VersionKind::Digest),
                ("v2", VersionKind::Tag)
            ]
        );

        // Only a tarball path: it is the name, whole.
        let mut v = minimal();
        v["ArtifactName"] = json!("testdata/images/alpine-3.19.tar.gz");
        let scan = parse_value(&v).unwrap();
        assert_eq!(scan.image, "testdata/images/alpine-3.19.tar.gz");
        assert_eq!(scan.versions, []);
    }

    fn tag(s: &str) -> Option<ImageVersion> {
        Some(ImageVersion {
            version: s.into(),
            kind: VersionKind::Tag,
        })
    }

    fn digest(s: &str) -> Option<ImageVersion> {
        Some(ImageVersion {
            version: s.into(),
            kind: VersionKind::Digest,
        })
    }

    #[test]
    fn split_reference_cases() {
        let cases = [
            ("alpine", ("alpine", None)),
            ("alpine:3.19", ("alpine", tag("3.19"))),
            ("team/app:v1.4.2", ("team/app", tag("v1.4.2"))),
            ("repo@sha256:abc", ("repo", digest("sha256:abc"))),
            ("repo:tag@sha256:x", ("repo", digest("sha256:x"))),
            ("localhost:5000/app", ("localhost:5000/app", None)),
            ("localhost:5000/app:1.0", ("localhost:5000/app", tag("1.0"))),
            (
                "localhost:5000/team/app:v2@sha256:def",
                ("localhost:5000/team/app", digest("sha256:def")),
            ),
            (
                "localhost:5000/app@sha256:def",
                ("localhost:5000/app", digest("sha256:def")),
            ),
            (
                "testdata/fixtures/images/alpine-310.tar.gz",
                ("testdata/fixtures/images/alpine-310.tar.gz", None),
            ),
            ("  app:latest ", ("app", tag("latest"))),
            ("app:", ("app:", None)),
            (":tag", (":tag", None)),
            ("app@", ("app", None)),
            ("app:v1@", ("app", tag("v1"))),
            ("@sha256:x", ("@sha256:x", None)),
            (r"C:\images\app.tar", (r"C:\images\app.tar", None)),
            ("", ("", None)),
        ];
        for (input, (repo, version)) in cases {
            assert_eq!(
                split_reference(input),
                (repo.to_owned(), version),
                "{input:?}"
            );
        }
    }

    /// JSON trees biased towards Trivy's keys and values, so mutations reach deep code paths.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            Just(json!(2)),
            prop_oneof![
                Just("CRITICAL"),
                Just("low"),
                Just(""),
                Just("app:v1"),
                Just("r:5000/a@sha256:1"),
                Just("2024-01-01T00:00:00Z"),
            ]
            .prop_map(Value::from),
            "[a-zA-Z0-9:@/._ -]{0,16}".prop_map(Value::from),
        ];
        let key = prop_oneof![
            prop_oneof![
                Just("SchemaVersion"),
                Just("ArtifactName"),
                Just("CreatedAt"),
                Just("ReportID"),
                Just("Metadata"),
                Just("OS"),
                Just("Family"),
                Just("RepoTags"),
                Just("RepoDigests"),
                Just("Results"),
                Just("Target"),
                Just("Vulnerabilities"),
                Just("VulnerabilityID"),
                Just("PkgName"),
                Just("PkgID"),
                Just("Severity"),
                Just("FixedVersion"),
            ]
            .prop_map(String::from),
            "[A-Za-z]{0,8}",
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kvs| Value::Object(kvs.into_iter().collect())),
            ]
        })
    }

    /// Pointers into [`minimal`] (plus a few that do not exist yet) to overwrite.
    const MUTATION_POINTS: [&str; 12] = [
        "/SchemaVersion",
        "/ArtifactName",
        "/CreatedAt",
        "/Metadata",
        "/Results",
        "/Results/0",
        "/Results/0/Target",
        "/Results/0/Vulnerabilities",
        "/Results/0/Vulnerabilities/0",
        "/Results/0/Vulnerabilities/0/Severity",
        "/Results/0/Vulnerabilities/0/PkgName",
        "/Results/0/Vulnerabilities/0/InstalledVersion",
    ];

    fn check_no_panic(body: &[u8]) {
        if let Ok(scan) = parse_report(body) {
            assert_eq!(scan.counts.total() as usize, scan.findings.len());
            assert!(!scan.image.trim().is_empty());
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
            check_no_panic(&body);
        }

        #[test]
        fn never_panics_on_json_trees(value in arb_json()) {
            check_no_panic(value.to_string().as_bytes());
            // The same tree as a report body with a valid schema version.
            let mut report = json!({"SchemaVersion": 2});
            if let (Value::Object(report), Value::Object(fields)) = (&mut report, value) {
                report.extend(fields);
                report.insert("SchemaVersion".into(), json!(2));
            }
            check_no_panic(report.to_string().as_bytes());
        }

        #[test]
        fn never_panics_on_mutated_reports(
            point in 0..MUTATION_POINTS.len(),
            replacement in arb_json(),
        ) {
            let mut report = minimal();
            if let Some(slot) = report.pointer_mut(MUTATION_POINTS[point]) {
                *slot = replacement;
            }
            check_no_panic(report.to_string().as_bytes());
        }

        #[test]
        fn split_reference_never_panics(s in "\\PC{0,40}") {
            let (repo, _) = split_reference(&s);
            prop_assert!(repo.len() <= s.len());
        }
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> String {
        match parse_report(body.to_string().as_bytes()) {
            Err(ReportError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn nul_characters_are_refused_with_their_path() {
        let body = json!({"SchemaVersion": 2, "ArtifactName": "a", "Results": [
            {"Target": "t", "Vulnerabilities": [{"VulnerabilityID": "CVE-1", "PkgName": "p\u{0}q", "Severity": "LOW"}]}]});
        assert_eq!(field_of(body), "Results[0].Vulnerabilities[0].PkgName");
    }

    #[test]
    fn overlong_image_names_and_too_many_versions_are_refused() {
        let long = format!("registry.example.com/{}", "x".repeat(600));
        assert_eq!(
            field_of(json!({"SchemaVersion": 2, "ArtifactName": long})),
            "ArtifactName"
        );
        let tags: Vec<String> = (0..=MAX_VERSIONS).map(|i| format!("app:v{i}")).collect();
        let body =
            json!({"SchemaVersion": 2, "ArtifactName": "app", "Metadata": {"RepoTags": tags}});
        assert_eq!(field_of(body), "Metadata.RepoTags");
    }

    #[test]
    fn timestamps_outside_four_digit_years_are_refused() {
        for t in ["0000-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01"] {
            assert_eq!(
                field_of(json!({"SchemaVersion": 2, "ArtifactName": "a", "CreatedAt": t})),
                "CreatedAt"
            );
        }
    }
}

//! The service's domain types: what a stored scan is, independent of Trivy's JSON and of SQL.
//!
//! `trivy.rs` turns a report into a [`NewScan`]; `store/` persists it and answers queries with
//! the view types below, which are also the JSON the API returns and the values it caches.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Trivy's severities, lowest first.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Not rated.
    Unknown,
    /// LOW.
    Low,
    /// MEDIUM.
    Medium,
    /// HIGH.
    High,
    /// CRITICAL.
    Critical,
}

impl Severity {
    /// Every severity, highest first (the order of reports and filters).
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Unknown,
    ];

    /// The upper-case name Trivy uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        }
    }

    /// Parses a name, ignoring case and surrounding spaces.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Number of findings per severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub struct SeverityCounts {
    /// CRITICAL findings.
    pub critical: u32,
    /// HIGH findings.
    pub high: u32,
    /// MEDIUM findings.
    pub medium: u32,
    /// LOW findings.
    pub low: u32,
    /// UNKNOWN findings.
    pub unknown: u32,
}

impl SeverityCounts {
    /// Counts one finding of `severity`.
    pub fn add(&mut self, severity: Severity) {
        self.add_many(severity, 1);
    }

    /// Counts `n` findings of `severity`.
    pub fn add_many(&mut self, severity: Severity, n: u32) {
        let slot = self.slot(severity);
        *slot = slot.saturating_add(n);
    }

    fn slot(&mut self, severity: Severity) -> &mut u32 {
        match severity {
            Severity::Critical => &mut self.critical,
            Severity::High => &mut self.high,
            Severity::Medium => &mut self.medium,
            Severity::Low => &mut self.low,
            Severity::Unknown => &mut self.unknown,
        }
    }

    /// All findings.
    pub fn total(&self) -> u32 {
        self.critical + self.high + self.medium + self.low + self.unknown
    }
}

/// Whether an image version is a tag (`v10.2.0`) or a digest (`sha256:…`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    /// A tag from `RepoTags`.
    Tag,
    /// A manifest digest from `RepoDigests` (or a digest `ArtifactName`).
    Digest,
}

impl VersionKind {
    /// `tag` or `digest`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tag => "tag",
            Self::Digest => "digest",
        }
    }

    /// Parses `tag` or `digest`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tag" => Some(Self::Tag),
            "digest" => Some(Self::Digest),
            _ => None,
        }
    }
}

/// One tag or digest of an image that a scan covered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub struct ImageVersion {
    /// `v10.2.0` or `sha256:…`.
    pub version: String,
    /// Tag or digest.
    pub kind: VersionKind,
}

/// One vulnerability finding of a scan (deduplicated within the report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Finding {
    /// `Results[].Target`.
    pub target: String,
    /// `CVE-…`, `GHSA-…`.
    pub vulnerability_id: String,
    /// Package name.
    pub pkg_name: String,
    /// `name@version`, when Trivy gave one.
    pub pkg_id: Option<String>,
    /// Path of a language package inside the image.
    pub pkg_path: Option<String>,
    /// Installed version.
    pub installed_version: String,
    /// Fixed version(s), an opaque string (may be a list or a range).
    pub fixed_version: Option<String>,
    /// Severity.
    pub severity: Severity,
    /// `affected`, `fixed`, `will_not_fix`, …
    pub status: Option<String>,
    /// Short title.
    pub title: Option<String>,
    /// Advisory URL.
    pub primary_url: Option<String>,
}

/// A validated report, ready to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewScan {
    /// The image: repository name without tag or digest (`bkimminich/juice-shop`).
    pub image: String,
    /// `ArtifactName` as given.
    pub artifact_name: String,
    /// `Metadata.ImageID`.
    pub image_id: Option<String>,
    /// `Metadata.OS.Family`.
    pub os_family: Option<String>,
    /// `Metadata.OS.Name`.
    pub os_name: Option<String>,
    /// The report's `CreatedAt`, if it had one.
    pub created_at: Option<DateTime<Utc>>,
    /// `ReportID` (not unique: informational only).
    pub report_id: Option<String>,
    /// Tags and digests of `image` that the scan covered.
    pub versions: Vec<ImageVersion>,
    /// Vulnerability findings, deduplicated.
    pub findings: Vec<Finding>,
    /// Findings per severity.
    pub counts: SeverityCounts,
}

/// A stored scan without its findings: lists, image views and the POST answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScanSummary {
    /// Database id.
    pub id: i64,
    /// Image name.
    pub image: String,
    /// `ArtifactName`.
    pub artifact_name: String,
    /// `Metadata.ImageID`.
    pub image_id: Option<String>,
    /// OS family.
    pub os_family: Option<String>,
    /// OS name.
    pub os_name: Option<String>,
    /// Report `CreatedAt`, if any.
    pub created_at: Option<DateTime<Utc>>,
    /// When the service stored it.
    pub stored_at: DateTime<Utc>,
    /// `created_at`, or `stored_at` for reports without one: what "latest" orders by.
    pub scanned_at: DateTime<Utc>,
    /// Tags and digests covered.
    pub versions: Vec<ImageVersion>,
    /// Findings per severity.
    pub vulnerability_counts: SeverityCounts,
}

/// A stored scan with its findings: `GET /api/scan-results/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScanDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: ScanSummary,
    /// Every finding.
    pub vulnerabilities: Vec<Finding>,
}

/// A vulnerability aggregated across scans: `GET /api/vulnerabilities`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VulnerabilityEntry {
    /// `CVE-…`.
    pub vulnerability_id: String,
    /// Severity.
    pub severity: Severity,
    /// Package name.
    pub package: String,
    /// Installed version.
    pub installed_version: String,
    /// Fixed version(s), if any.
    pub fixed_version: Option<String>,
    /// Images with this finding, sorted.
    pub images: Vec<String>,
}

/// An image with its latest scan: `GET /api/images`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageEntry {
    /// Image name.
    pub image: String,
    /// Number of stored scans.
    pub scan_count: u64,
    /// The latest scan.
    pub latest: ScanSummary,
}

/// One scanned version of an image: `GET /api/images/{name}/versions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionEntry {
    /// `v10.2.0` or `sha256:…`.
    pub version: String,
    /// Tag or digest.
    pub kind: VersionKind,
    /// Scans that covered it.
    pub scan_count: u64,
    /// The newest of those scans.
    pub latest_scan_id: i64,
    /// When that scan was made.
    pub last_scanned_at: DateTime<Utc>,
}

/// One image's risk in the insights view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRisk {
    /// Image name.
    pub image: String,
    /// Weighted score of its latest scan's findings (CRITICAL 10, HIGH 5, MEDIUM 2, LOW 0.5,
    /// UNKNOWN 0.1; ×1.5 when no fix is available).
    pub risk_score: f64,
    /// Findings of the latest scan by severity.
    pub counts: SeverityCounts,
    /// Findings with a fixed version available.
    pub fixable: u32,
    /// The latest scan's id.
    pub latest_scan_id: i64,
}

/// A CVE and how many images it affects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CveImpact {
    /// `CVE-…`.
    pub vulnerability_id: String,
    /// The highest severity it was given.
    pub severity: Severity,
    /// Distinct images (latest scans) affected.
    pub image_count: u64,
    /// Distinct packages it was found in.
    pub package_count: u64,
}

/// The expensive analysis view: `GET /api/insights`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Insights {
    /// The 100 riskiest images, riskiest first (every image is scored).
    pub image_risk: Vec<ImageRisk>,
    /// CVEs affecting the most images (latest scans), at most 25.
    pub top_cves: Vec<CveImpact>,
    /// Findings by severity over every stored scan.
    pub severity_totals: SeverityCounts,
    /// Stored scans.
    pub scan_count: u64,
    /// Distinct images.
    pub image_count: u64,
    /// Images whose latest scan has any finding.
    pub images_at_risk: u64,
    /// Findings examined (latest scans).
    pub findings_analyzed: u64,
}

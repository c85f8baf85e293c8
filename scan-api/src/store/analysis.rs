//! Aggregations over findings: the vulnerability lists and the insights view.
//!
//! Both read plain rows and aggregate in Rust, so the SQL stays portable between PostgreSQL and
//! SQLite. Insights is deliberately real work over every stored scan: it is the endpoint whose
//! cost the cache is there to absorb.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::Row;

use super::read::parse_severity;
use super::{LATEST_IDS, Store, StoreError, trusted};
use crate::model::{CveImpact, ImageRisk, Insights, Severity, SeverityCounts, VulnerabilityEntry};

/// Weight of one finding in an image's risk score.
fn weight(severity: Severity) -> f64 {
    match severity {
        Severity::Critical => 10.0,
        Severity::High => 5.0,
        Severity::Medium => 2.0,
        Severity::Low => 0.5,
        Severity::Unknown => 0.1,
    }
}

/// Findings without a fix weigh this much more: there is nothing to upgrade to.
const NO_FIX_FACTOR: f64 = 1.5;

/// How many CVEs the insights list.
const TOP_CVES: usize = 25;

/// How many images the insights list by risk (all are scored).
const TOP_IMAGES: usize = 100;

impl Store {
    /// Findings aggregated by (vulnerability, severity, package, installed and fixed version),
    /// with the images affected; over every scan, or over each image's latest scan only.
    /// `severities` filters when not empty. Sorted by severity (highest first), then id.
    pub async fn vulnerabilities(
        &self,
        severities: &[Severity],
        latest_only: bool,
    ) -> Result<Vec<VulnerabilityEntry>, StoreError> {
        let mut sql = String::from(
            "SELECT f.vulnerability_id, f.severity, f.pkg_name, f.installed_version, \
             f.fixed_version, s.image FROM findings f JOIN scans s ON s.id = f.scan_id WHERE 1 = 1",
        );
        if latest_only {
            sql.push_str(&format!(" AND s.id IN ({LATEST_IDS})"));
        }
        if !severities.is_empty() {
            sql.push_str(&format!(
                " AND f.severity IN ({})",
                super::placeholders(1, severities.len())
            ));
        }
        let mut q = sqlx::query(trusted(sql));
        for s in severities {
            q = q.bind(s.as_str());
        }
        self.count(1);
        let rows = q.fetch_all(&self.pool).await?;
        type Group = (Severity, String, String, String, Option<String>);
        let mut groups: BTreeMap<Group, BTreeSet<String>> = BTreeMap::new();
        for r in &rows {
            let severity: String = r.try_get("severity")?;
            let key = (
                parse_severity(&severity)?,
                r.try_get("vulnerability_id")?,
                r.try_get("pkg_name")?,
                r.try_get("installed_version")?,
                r.try_get("fixed_version")?,
            );
            groups.entry(key).or_default().insert(r.try_get("image")?);
        }
        let mut out: Vec<VulnerabilityEntry> = groups
            .into_iter()
            .map(
                |(
                    (severity, vulnerability_id, package, installed_version, fixed_version),
                    images,
                )| {
                    VulnerabilityEntry {
                        vulnerability_id,
                        severity,
                        package,
                        installed_version,
                        fixed_version,
                        images: images.into_iter().collect(),
                    }
                },
            )
            .collect();
        // BTreeMap order is severity ascending; the API lists the most severe first.
        out.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.vulnerability_id.cmp(&b.vulnerability_id))
                .then_with(|| a.package.cmp(&b.package))
                .then_with(|| a.installed_version.cmp(&b.installed_version))
                .then_with(|| a.fixed_version.cmp(&b.fixed_version))
        });
        Ok(out)
    }

    /// The insights view: per-image risk from each image's latest scan, the CVEs affecting the
    /// most images, and severity totals over every stored scan.
    pub async fn insights(&self) -> Result<Insights, StoreError> {
        self.count(1);
        let scans = sqlx::query("SELECT image, critical, high, medium, low, unknown FROM scans")
            .fetch_all(&self.pool)
            .await?;
        let mut totals = SeverityCounts::default();
        let mut images = BTreeSet::new();
        for r in &scans {
            images.insert(r.try_get::<String, _>("image")?);
            for (sev, col) in [
                (Severity::Critical, "critical"),
                (Severity::High, "high"),
                (Severity::Medium, "medium"),
                (Severity::Low, "low"),
                (Severity::Unknown, "unknown"),
            ] {
                let n: i64 = r.try_get(col)?;
                totals.add_many(sev, u32::try_from(n).unwrap_or(0));
            }
        }

        self.count(1);
        let rows = sqlx::query(trusted(format!(
            "SELECT s.id, s.image, f.vulnerability_id, f.pkg_name, f.severity, f.fixed_version \
             FROM findings f JOIN scans s ON s.id = f.scan_id WHERE s.id IN ({LATEST_IDS})"
        )))
        .fetch_all(&self.pool)
        .await?;
        // Every image appears, also those whose latest scan is clean.
        self.count(1);
        let latest = sqlx::query(trusted(format!(
            "SELECT s.id, s.image FROM scans s WHERE s.id IN ({LATEST_IDS})"
        )))
        .fetch_all(&self.pool)
        .await?;
        let mut risk: HashMap<String, ImageRisk> = HashMap::new();
        for r in &latest {
            let image: String = r.try_get("image")?;
            risk.insert(
                image.clone(),
                ImageRisk {
                    image,
                    risk_score: 0.0,
                    counts: SeverityCounts::default(),
                    fixable: 0,
                    latest_scan_id: r.try_get("id")?,
                },
            );
        }
        // CVE -> (highest severity, images, packages)
        let mut cves: HashMap<String, (Severity, BTreeSet<String>, BTreeSet<String>)> =
            HashMap::new();
        for r in &rows {
            let image: String = r.try_get("image")?;
            let severity = parse_severity(&r.try_get::<String, _>("severity")?)?;
            let fixed: Option<String> = r.try_get("fixed_version")?;
            let fixable = fixed.is_some_and(|f| !f.is_empty());
            let entry = risk.entry(image.clone()).or_insert_with(|| ImageRisk {
                image: image.clone(),
                risk_score: 0.0,
                counts: SeverityCounts::default(),
                fixable: 0,
                latest_scan_id: 0,
            });
            entry.latest_scan_id = r.try_get("id")?;
            entry.counts.add(severity);
            entry.risk_score += weight(severity) * if fixable { 1.0 } else { NO_FIX_FACTOR };
            entry.fixable += u32::from(fixable);
            let cve = cves
                .entry(r.try_get("vulnerability_id")?)
                .or_insert_with(|| (severity, BTreeSet::new(), BTreeSet::new()));
            cve.0 = cve.0.max(severity);
            cve.1.insert(image);
            cve.2.insert(r.try_get("pkg_name")?);
        }
        let mut image_risk: Vec<ImageRisk> = risk.into_values().collect();
        for r in &mut image_risk {
            r.risk_score = (r.risk_score * 100.0).round() / 100.0;
        }
        image_risk.sort_by(|a, b| {
            b.risk_score
                .total_cmp(&a.risk_score)
                .then_with(|| a.image.cmp(&b.image))
        });
        let images_at_risk = image_risk.iter().filter(|r| r.risk_score > 0.0).count() as u64;
        image_risk.truncate(TOP_IMAGES);
        let mut top_cves: Vec<CveImpact> = cves
            .into_iter()
            .map(|(id, (severity, imgs, pkgs))| CveImpact {
                vulnerability_id: id,
                severity,
                image_count: imgs.len() as u64,
                package_count: pkgs.len() as u64,
            })
            .collect();
        top_cves.sort_by(|a, b| {
            b.image_count
                .cmp(&a.image_count)
                .then_with(|| b.severity.cmp(&a.severity))
                .then_with(|| a.vulnerability_id.cmp(&b.vulnerability_id))
        });
        top_cves.truncate(TOP_CVES);
        Ok(Insights {
            image_risk,
            top_cves,
            severity_totals: totals,
            scan_count: scans.len() as u64,
            image_count: images.len() as u64,
            images_at_risk,
            findings_analyzed: rows.len() as u64,
        })
    }
}

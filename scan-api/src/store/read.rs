//! Reads: scan lists, one scan with its findings, images and their versions.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{LATEST_IDS, SUMMARY_COLUMNS, Store, StoreError, summary_from_row, trusted};
use crate::model::{
    Finding, ImageEntry, ScanDetail, ScanSummary, Severity, VersionEntry, VersionKind,
};

impl Store {
    /// Scan summaries, newest first, optionally of one image.
    pub async fn list_scans(
        &self,
        image: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ScanSummary>, StoreError> {
        if image.is_some_and(|i| i.contains('\0')) {
            // No stored name holds NUL (reports with one are refused), and PostgreSQL would
            // reject the parameter.
            return Ok(Vec::new());
        }
        let rows = match image {
            Some(image) => {
                let sql = format!(
                    "SELECT {SUMMARY_COLUMNS} FROM scans s WHERE s.image = $1 \
                     ORDER BY s.scanned_at_us DESC, s.id DESC LIMIT $2 OFFSET $3"
                );
                self.count(1);
                sqlx::query(trusted(sql))
                    .bind(image)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {SUMMARY_COLUMNS} FROM scans s \
                     ORDER BY s.scanned_at_us DESC, s.id DESC LIMIT $1 OFFSET $2"
                );
                self.count(1);
                sqlx::query(trusted(sql))
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(summary_from_row).collect()
    }

    /// One scan with its findings, in report order.
    pub async fn get_scan(&self, id: i64) -> Result<Option<ScanDetail>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS} FROM scans s WHERE s.id = $1");
        self.count(1);
        let Some(row) = sqlx::query(trusted(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let summary = summary_from_row(&row)?;
        self.count(1);
        let rows = sqlx::query(
            "SELECT target, vulnerability_id, pkg_name, pkg_id, pkg_path, installed_version, \
             fixed_version, severity, status, title, primary_url \
             FROM findings WHERE scan_id = $1 ORDER BY ord",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let vulnerabilities = rows
            .iter()
            .map(|r| {
                let severity: String = r.try_get("severity")?;
                Ok(Finding {
                    target: r.try_get("target")?,
                    vulnerability_id: r.try_get("vulnerability_id")?,
                    pkg_name: r.try_get("pkg_name")?,
                    pkg_id: r.try_get("pkg_id")?,
                    pkg_path: r.try_get("pkg_path")?,
                    installed_version: r.try_get("installed_version")?,
                    fixed_version: r.try_get("fixed_version")?,
                    severity: parse_severity(&severity)?,
                    status: r.try_get("status")?,
                    title: r.try_get("title")?,
                    primary_url: r.try_get("primary_url")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(ScanDetail {
            summary,
            vulnerabilities,
        }))
    }

    /// Every image with its latest scan, by name.
    pub async fn images(&self) -> Result<Vec<ImageEntry>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS} FROM scans s WHERE s.id IN ({LATEST_IDS})");
        self.count(1);
        let latest = sqlx::query(trusted(sql)).fetch_all(&self.pool).await?;
        self.count(1);
        let counts = sqlx::query("SELECT image, COUNT(*) AS n FROM scans GROUP BY image")
            .fetch_all(&self.pool)
            .await?;
        let mut scan_counts = BTreeMap::new();
        for r in &counts {
            let image: String = r.try_get("image")?;
            let n: i64 = r.try_get("n")?;
            scan_counts.insert(image, n);
        }
        let mut out = latest
            .iter()
            .map(|row| {
                let latest = summary_from_row(row)?;
                Ok(ImageEntry {
                    image: latest.image.clone(),
                    scan_count: scan_counts.get(&latest.image).copied().unwrap_or(0) as u64,
                    latest,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Sorted here, by bytes, so both backends agree (SQL collations differ).
        out.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(out)
    }

    /// The latest scan of `image`, if it has any.
    pub async fn image_latest(&self, image: &str) -> Result<Option<ScanSummary>, StoreError> {
        if image.contains('\0') {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM scans s WHERE s.image = $1 \
             ORDER BY s.scanned_at_us DESC, s.id DESC LIMIT 1"
        );
        self.count(1);
        let row = sqlx::query(trusted(sql))
            .bind(image)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(summary_from_row).transpose()
    }

    /// The tags and digests of `image` that were scanned, newest first; `None` if the image has
    /// no scans.
    pub async fn image_versions(
        &self,
        image: &str,
    ) -> Result<Option<Vec<VersionEntry>>, StoreError> {
        if image.contains('\0') {
            return Ok(None);
        }
        self.count(1);
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM scans WHERE image = $1 LIMIT 1")
                .bind(image)
                .fetch_optional(&self.pool)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        self.count(1);
        let rows = sqlx::query(
            "SELECT v.version, v.kind, s.id, s.scanned_at_us, s.stored_at FROM scan_versions v \
             JOIN scans s ON s.id = v.scan_id WHERE v.image = $1",
        )
        .bind(image)
        .fetch_all(&self.pool)
        .await?;
        // (version, kind) -> (count, newest (scanned_at_us, id))
        let mut by_version: BTreeMap<(String, String), (u64, (i64, i64))> = BTreeMap::new();
        for r in &rows {
            let key = (r.try_get("version")?, r.try_get("kind")?);
            let newest = (r.try_get("scanned_at_us")?, r.try_get("id")?);
            let e = by_version.entry(key).or_insert((0, newest));
            e.0 += 1;
            e.1 = e.1.max(newest);
        }
        let mut out = by_version
            .into_iter()
            .map(|((version, kind), (scan_count, (at, id)))| {
                Ok(VersionEntry {
                    kind: VersionKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("version kind {kind:?}")))?,
                    version,
                    scan_count,
                    latest_scan_id: id,
                    last_scanned_at: chrono::DateTime::from_timestamp_micros(at)
                        .ok_or_else(|| StoreError::Corrupt(format!("scanned_at_us = {at}")))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| {
            (b.last_scanned_at, b.latest_scan_id, &a.version).cmp(&(
                a.last_scanned_at,
                a.latest_scan_id,
                &b.version,
            ))
        });
        Ok(Some(out))
    }
}

pub(super) fn parse_severity(s: &str) -> Result<Severity, StoreError> {
    Severity::parse(s).ok_or_else(|| StoreError::Corrupt(format!("severity {s:?}")))
}

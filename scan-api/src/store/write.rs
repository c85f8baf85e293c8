//! Storing and deleting scans. Each is one transaction: a failure leaves nothing half-written.

use chrono::Utc;

use super::{Store, StoreError, format_time, placeholders, trusted};
use crate::model::{NewScan, ScanSummary};

/// Findings inserted per statement (13 columns each, well under both backends' limits).
const FINDINGS_PER_INSERT: usize = 200;

impl Store {
    /// Stores a scan with its versions and findings in one transaction.
    pub async fn insert_scan(&self, scan: &NewScan) -> Result<ScanSummary, StoreError> {
        let stored_at = Utc::now();
        // Stored with microsecond precision; the answer shows what a later read will.
        let scanned_at_us = scan.created_at.unwrap_or(stored_at).timestamp_micros();
        let versions_json = serde_json::to_string(&scan.versions)
            .map_err(|e| StoreError::Corrupt(format!("versions: {e}")))?;
        let c = &scan.counts;

        let mut tx = self.pool.begin().await?;
        self.count(1);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO scans (image, artifact_name, image_id, os_family, os_name, report_id, \
             created_at, stored_at, scanned_at_us, versions_json, critical, high, medium, low, unknown) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
        )
        .bind(&scan.image)
        .bind(&scan.artifact_name)
        .bind(&scan.image_id)
        .bind(&scan.os_family)
        .bind(&scan.os_name)
        .bind(&scan.report_id)
        .bind(scan.created_at.map(format_time))
        .bind(format_time(stored_at))
        .bind(scanned_at_us)
        .bind(&versions_json)
        .bind(i64::from(c.critical))
        .bind(i64::from(c.high))
        .bind(i64::from(c.medium))
        .bind(i64::from(c.low))
        .bind(i64::from(c.unknown))
        .fetch_one(&mut *tx)
        .await?;

        if !scan.versions.is_empty() {
            let rows: Vec<String> = (0..scan.versions.len())
                .map(|i| format!("({})", placeholders(i * 4 + 1, 4)))
                .collect();
            let sql = format!(
                "INSERT INTO scan_versions (scan_id, image, version, kind) VALUES {}",
                rows.join(", ")
            );
            let mut q = sqlx::query(trusted(sql));
            for v in &scan.versions {
                q = q
                    .bind(id)
                    .bind(&scan.image)
                    .bind(&v.version)
                    .bind(v.kind.as_str());
            }
            self.count(1);
            q.execute(&mut *tx).await?;
        }

        for (chunk_no, chunk) in scan.findings.chunks(FINDINGS_PER_INSERT).enumerate() {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 13 + 1, 13)))
                .collect();
            let sql = format!(
                "INSERT INTO findings (scan_id, ord, target, vulnerability_id, pkg_name, pkg_id, \
                 pkg_path, installed_version, fixed_version, severity, status, title, primary_url) \
                 VALUES {}",
                rows.join(", ")
            );
            let mut q = sqlx::query(trusted(sql));
            for (i, f) in chunk.iter().enumerate() {
                let ord = (chunk_no * FINDINGS_PER_INSERT + i) as i64;
                q = q
                    .bind(id)
                    .bind(ord)
                    .bind(&f.target)
                    .bind(&f.vulnerability_id)
                    .bind(&f.pkg_name)
                    .bind(&f.pkg_id)
                    .bind(&f.pkg_path)
                    .bind(&f.installed_version)
                    .bind(&f.fixed_version)
                    .bind(f.severity.as_str())
                    .bind(&f.status)
                    .bind(&f.title)
                    .bind(&f.primary_url);
            }
            self.count(1);
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;

        Ok(ScanSummary {
            id,
            image: scan.image.clone(),
            artifact_name: scan.artifact_name.clone(),
            image_id: scan.image_id.clone(),
            os_family: scan.os_family.clone(),
            os_name: scan.os_name.clone(),
            created_at: scan.created_at,
            stored_at,
            scanned_at: chrono::DateTime::from_timestamp_micros(scanned_at_us)
                .ok_or_else(|| StoreError::Corrupt(format!("scanned_at_us = {scanned_at_us}")))?,
            versions: scan.versions.clone(),
            vulnerability_counts: scan.counts,
        })
    }

    /// Deletes a scan; returns its image, or `None` if there was no such scan.
    pub async fn delete_scan(&self, id: i64) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The write comes first, so SQLite takes its write lock at once instead of upgrading a
        // read lock (which fails with SQLITE_BUSY when another writer holds it).
        self.count(1);
        let image: Option<String> =
            sqlx::query_scalar("DELETE FROM scans WHERE id = $1 RETURNING image")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(image) = image else {
            return Ok(None);
        };
        for sql in [
            "DELETE FROM findings WHERE scan_id = $1",
            "DELETE FROM scan_versions WHERE scan_id = $1",
        ] {
            self.count(1);
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(image))
    }
}

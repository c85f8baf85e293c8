//! The value both benches use: a ~2 KB JSON-like scan summary, as `scan-api` caches.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finding {
    pub(crate) id: String,
    pub(crate) package: String,
    pub(crate) installed: String,
    pub(crate) fixed: Option<String>,
    pub(crate) severity: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScanSummary {
    pub(crate) id: u64,
    pub(crate) artifact_name: String,
    pub(crate) created_at: String,
    pub(crate) counts: Vec<(String, u32)>,
    pub(crate) findings: Vec<Finding>,
}

/// About 2 KB as JSON.
pub(crate) fn value() -> ScanSummary {
    let severities = ["CRITICAL", "HIGH", "MEDIUM", "LOW"];
    ScanSummary {
        id: 123_456,
        artifact_name: "bkimminich/juice-shop:v12.10.2".into(),
        created_at: "2026-11-21T12:00:00Z".into(),
        counts: severities.iter().map(|s| ((*s).to_owned(), 7)).collect(),
        findings: (0..19)
            .map(|i| Finding {
                id: format!("CVE-2021-{:05}", 3000 + i),
                package: format!("package-{i}"),
                installed: format!("1.{i}.0"),
                fixed: (i % 3 != 0).then(|| format!("1.{i}.5")),
                severity: severities[i % 4].to_owned(),
            })
            .collect(),
    }
}

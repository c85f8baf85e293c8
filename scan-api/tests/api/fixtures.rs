//! Every real Trivy fixture imports, and its image then shows the right counts by severity.

use serde_json::Value;
use tiercache::Mode;

use crate::helpers::{Db, TestEnv, encode, fixtures};

async fn every_fixture_imports_with_the_right_counts(db: Db, mode: Mode) {
    let Some(files) = fixtures() else { return };
    assert!(
        files.len() >= 15,
        "expected the 15 fixtures, found {}",
        files.len()
    );
    let env = TestEnv::in_mode(db, mode);
    let app = env.app().await;
    for file in &files {
        let raw = std::fs::read(file).unwrap();
        let report: Value = serde_json::from_slice(&raw).unwrap();
        // The expected counts, computed from the report itself.
        let mut expected = serde_json::Map::new();
        for sev in ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"] {
            expected.insert(sev.into(), 0.into());
        }
        let mut seen = std::collections::HashSet::new();
        for result in report["Results"].as_array().into_iter().flatten() {
            for v in result["Vulnerabilities"].as_array().into_iter().flatten() {
                let key = (
                    result["Target"].to_string(),
                    v["VulnerabilityID"].to_string(),
                    v.get("PkgID").unwrap_or(&v["PkgName"]).to_string(),
                    v["InstalledVersion"].to_string(),
                    v["PkgPath"].to_string(),
                );
                if seen.insert(key) {
                    let sev = v["Severity"].as_str().unwrap();
                    let n = expected[sev].as_u64().unwrap() + 1;
                    expected.insert(sev.into(), n.into());
                }
            }
        }
        let created = app.post_report(raw).await;
        assert_eq!(
            created.status,
            201,
            "{}: {:?}",
            file.display(),
            created.body
        );
        assert_eq!(
            created.body["vulnerability_counts"],
            Value::Object(expected.clone()),
            "{}",
            file.display()
        );
        let image = created.body["image"].as_str().unwrap().to_owned();
        let id = created.body["id"].as_i64().unwrap();
        assert!(created.body["artifact_name"].is_string());

        // Its image's latest scan is this one (ties on CreatedAt go to the scan stored last).
        let latest = app
            .get(&format!("/api/images/{}/latest", encode(&image)))
            .await;
        assert_eq!(latest.status, 200, "{image}: {:?}", latest.body);
        assert_eq!(latest.body["id"].as_i64(), Some(id), "{}", file.display());
        assert_eq!(
            latest.body["vulnerability_counts"],
            Value::Object(expected),
            "{}",
            file.display()
        );

        let detail = app.get(&format!("/api/scan-results/{id}")).await;
        let total: u64 = created.body["vulnerability_total"].as_u64().unwrap();
        assert_eq!(
            detail.body["vulnerabilities"].as_array().unwrap().len() as u64,
            total
        );
    }
    // juice-shop: the two versions scanned, by tag and by digest.
    let versions = app
        .get("/api/images/bkimminich%2Fjuice-shop/versions")
        .await;
    let tags: Vec<&str> = versions
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "tag")
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(tags, vec!["v12.10.2", "v10.2.0"], "newest first");
    let latest = app.get("/api/images/bkimminich%2Fjuice-shop/latest").await;
    assert_eq!(
        latest.body["vulnerability_counts"]["CRITICAL"], 28,
        "v12.10.2 is the newest scan"
    );
    // Secrets are not findings.
    let all = app.get("/api/vulnerabilities").await;
    assert!(!all.body.to_string().contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_on_sqlite() {
    every_fixture_imports_with_the_right_counts(Db::Sqlite, Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_on_postgres() {
    every_fixture_imports_with_the_right_counts(Db::Postgres, Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_standalone() {
    every_fixture_imports_with_the_right_counts(Db::Sqlite, Mode::Standalone).await;
}

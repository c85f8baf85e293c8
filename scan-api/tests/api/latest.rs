//! "Latest" follows the report's CreatedAt (stored time when absent; ties to the scan stored
//! last), deleted scans disappear from every view, and awkward input never reaches the database
//! as a 500 — on both backends.

use serde_json::{Value, json};
use tiercache::Mode;

use crate::helpers::{Db, TestEnv};

fn report_at(image: &str, tag: &str, created_at: Option<&str>, severity: &str) -> Vec<u8> {
    let mut r = json!({
        "SchemaVersion": 2,
        "ArtifactName": format!("{image}:{tag}"),
        "Metadata": {"RepoTags": [format!("{image}:{tag}")]},
        "Results": [{"Target": "t", "Class": "os-pkgs", "Vulnerabilities": [
            {"VulnerabilityID": "CVE-2000-0001", "PkgName": "p", "InstalledVersion": "1", "Severity": severity}]}],
    });
    if let Some(t) = created_at {
        r["CreatedAt"] = Value::from(t);
    }
    r.to_string().into_bytes()
}

async fn latest_follows_created_at(db: Db, mode: Mode) {
    let env = TestEnv::in_mode(db, mode);
    let app = env.app().await;
    let latest_id = |a: &crate::helpers::Answer| a.body["id"].as_i64().unwrap();
    let newer = app
        .post_report(report_at(
            "lt/app",
            "v2",
            Some("2024-06-01T00:00:00+02:00"),
            "HIGH",
        ))
        .await;
    assert_eq!(
        latest_id(&app.get("/api/images/lt%2Fapp/latest").await),
        latest_id(&newer)
    );
    // An older report stored later does not become the latest.
    let older = app
        .post_report(report_at(
            "lt/app",
            "v1",
            Some("2024-01-01T00:00:00Z"),
            "LOW",
        ))
        .await;
    assert_eq!(older.status, 201);
    let latest = app.get("/api/images/lt%2Fapp/latest").await;
    assert_eq!(latest_id(&latest), latest_id(&newer));
    assert_eq!(latest.body["vulnerability_counts"]["HIGH"], 1);
    // The same instant (another offset): the scan stored last wins.
    let tie = app
        .post_report(report_at(
            "lt/app",
            "v3",
            Some("2024-05-31T22:00:00Z"),
            "CRITICAL",
        ))
        .await;
    assert_eq!(
        latest_id(&app.get("/api/images/lt%2Fapp/latest").await),
        latest_id(&tie)
    );
    // No CreatedAt: scanned when stored (now), so newest.
    let undated = app
        .post_report(report_at("lt/app", "v4", None, "MEDIUM"))
        .await;
    assert_eq!(
        latest_id(&app.get("/api/images/lt%2Fapp/latest").await),
        latest_id(&undated)
    );
    // Lists are newest first by the same rule.
    let ids: Vec<i64> = app
        .get("/api/scan-results?image=lt%2Fapp")
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            latest_id(&undated),
            latest_id(&tie),
            latest_id(&newer),
            latest_id(&older)
        ]
    );
    // Active vulnerabilities see only the latest scan.
    let active = app.get("/api/vulnerabilities/active").await;
    assert_eq!(active.body.as_array().unwrap().len(), 1);
    assert_eq!(active.body[0]["severity"], "MEDIUM");

    // Deleting the latest: every cached view moves on.
    let detail = format!("/api/scan-results/{}", latest_id(&undated));
    assert_eq!(app.get(&detail).await.status, 200);
    assert_eq!(app.get(&detail).await.x_cache.as_deref(), Some("HIT"));
    assert_eq!(app.delete(&detail).await.status, 204);
    let gone = app.get(&detail).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.x_cache.as_deref(), Some("MISS"));
    assert_eq!(
        latest_id(&app.get("/api/images/lt%2Fapp/latest").await),
        latest_id(&tie)
    );
    assert_eq!(
        app.get("/api/vulnerabilities/active").await.body[0]["severity"],
        "CRITICAL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_on_sqlite() {
    latest_follows_created_at(Db::Sqlite, Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_on_postgres() {
    latest_follows_created_at(Db::Postgres, Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_standalone() {
    latest_follows_created_at(Db::Sqlite, Mode::Standalone).await;
}

async fn awkward_input_never_500(db: Db, mode: Mode) {
    let env = TestEnv::in_mode(db, mode);
    let app = env.app().await;
    let nul = json!({"SchemaVersion": 2, "ArtifactName": "a\u{0}b"})
        .to_string()
        .into_bytes();
    let a = app.post_report(nul).await;
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert!(a.error().contains("ArtifactName"));
    let long = json!({"SchemaVersion": 2, "ArtifactName": "x".repeat(5000)})
        .to_string()
        .into_bytes();
    assert_eq!(app.post_report(long).await.status, 422);
    let far = report_at("a/b", "v", Some("9999-12-31T23:59:59-00:01"), "LOW");
    assert_eq!(app.post_report(far).await.status, 422);
    for path in [
        "/api/scan-results?image=%00",
        "/api/images/%00/latest",
        "/api/images/%00/versions",
        "/api/scan-results?limit=1000&offset=9223372036854775807",
        "/api/scan-results?image=",
    ] {
        let a = app.get(path).await;
        assert!(
            a.status.is_success() || a.status == 404,
            "{path}: {} {:?}",
            a.status,
            a.body
        );
    }
    let name = format!("/api/images/{}/latest", "y".repeat(4000));
    assert_eq!(app.get(&name).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_input_on_sqlite() {
    awkward_input_never_500(Db::Sqlite, Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_input_on_postgres() {
    awkward_input_never_500(Db::Postgres, Mode::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_input_standalone() {
    awkward_input_never_500(Db::Sqlite, Mode::Standalone).await;
}

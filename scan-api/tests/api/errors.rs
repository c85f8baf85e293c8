//! Bad input gets a clear 4xx JSON error naming the problem; nothing is half-written.

use reqwest::Method;
use serde_json::json;
use tiercache::Mode;

use crate::helpers::{Db, TestEnv, in_each_mode, report};

in_each_mode!(
    bad_reports_are_refused_with_the_field_named,
    bodies_over_the_limit_get_413,
    bad_parameters_and_unknown_things_get_clear_errors,
);

async fn bad_reports_are_refused_with_the_field_named(mode: Mode) {
    let env = TestEnv::in_mode(Db::Sqlite, mode);
    let app = env.app().await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "JSON"),
        (b"".to_vec(), 400, "JSON"),
        (json!({"SchemaVersion": 1, "ArtifactName": "a"}).to_string().into_bytes(), 422, "SchemaVersion"),
        (json!({"ArtifactName": "a"}).to_string().into_bytes(), 422, "SchemaVersion"),
        (json!({"SchemaVersion": 2}).to_string().into_bytes(), 422, "ArtifactName"),
        (json!({"SchemaVersion": 2, "ArtifactName": 5}).to_string().into_bytes(), 422, "ArtifactName"),
        (json!([1, 2]).to_string().into_bytes(), 422, "$"),
        (json!({"SchemaVersion": 2, "ArtifactName": "a", "Metadata": {"RepoTags": [5]}}).to_string().into_bytes(), 422, "RepoTags"),
        (json!({"SchemaVersion": 2, "ArtifactName": "a", "Results": [{"Target": "t", "Vulnerabilities": [
            {"VulnerabilityID": "CVE-1", "PkgName": "p", "Severity": "SEVERE"}]}]}).to_string().into_bytes(), 422, "Severity"),
        (json!({"SchemaVersion": 2, "ArtifactName": "a", "Results": [{"Target": "t", "Vulnerabilities": "x"}]}).to_string().into_bytes(), 422, "Vulnerabilities"),
    ];
    for (body, status, field) in cases {
        let a = app.post_report(body.clone()).await;
        assert_eq!(
            a.status.as_u16(),
            status,
            "{}: {:?}",
            String::from_utf8_lossy(&body),
            a.body
        );
        assert!(a.error().contains(field), "{field} in {:?}", a.body);
    }
    // Nothing was stored.
    assert_eq!(app.get("/api/scan-results").await.body, json!([]));
}

async fn bodies_over_the_limit_get_413(mode: Mode) {
    let env = TestEnv::in_mode(Db::Sqlite, mode);
    let app = env.app_with(|b| b, 2048, None).await;
    let big = report("big/image", "v1", &["HIGH"; 100]);
    assert!(big.len() > 2048);
    let a = app.post_report(big).await;
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert!(a.error().contains("2048"), "{:?}", a.body);
    assert_eq!(
        app.post_report(report("small/image", "v1", &["LOW"]))
            .await
            .status,
        201
    );
}

async fn bad_parameters_and_unknown_things_get_clear_errors(mode: Mode) {
    let env = TestEnv::in_mode(Db::Sqlite, mode);
    let app = env.app().await;
    for (path, status, needle) in [
        ("/api/scan-results?limit=0", 400, "limit"),
        ("/api/scan-results?limit=1001", 400, "limit"),
        ("/api/scan-results?limit=abc", 400, "limit"),
        ("/api/scan-results?offset=-3", 400, "offset"),
        ("/api/vulnerabilities?severity=HIGH,SEVERE", 400, "SEVERE"),
        ("/api/vulnerabilities/active?severity=nope", 400, "severity"),
        ("/api/scan-results/abc", 400, "scan id"),
        ("/api/scan-results/0", 400, "scan id"),
        ("/api/scan-results/99999999999999999999999", 400, "scan id"),
        ("/api/scan-results/12345", 404, "12345"),
        ("/api/images/no%2Fsuch/latest", 404, "no/such"),
        ("/api/images/no%2Fsuch/versions", 404, "no/such"),
        ("/api/images/x/other", 404, "other"),
        ("/api/images/latest", 404, "route"),
        ("/api/nothing-here", 404, "route"),
    ] {
        let a = app.get(path).await;
        assert_eq!(a.status.as_u16(), status, "{path}: {:?}", a.body);
        assert!(a.error().contains(needle), "{path}: {:?}", a.body);
        assert_eq!(
            a.content_type.as_deref(),
            Some("application/json"),
            "{path}"
        );
    }
    // Undecodable bytes in a name are no error: no image has that name.
    let a = app.get("/api/scan-results?image=%FF%FE").await;
    assert_eq!(
        (a.status.as_u16(), a.body.clone()),
        (200, serde_json::json!([]))
    );
    let a = app.delete("/api/scan-results/777").await;
    assert_eq!(a.status, 404);
    let a = app
        .request(Method::PUT, "/api/scan-results", None, None)
        .await;
    assert_eq!(a.status, 405);
    assert!(!a.error().is_empty());
}

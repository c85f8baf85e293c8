//! HTTP caching semantics of the read routes (tiercache-axum's response cache, as scan-api
//! applies it), in both cache modes: `ETag` and `304`, `Vary: accept-encoding`, requests with
//! `Authorization` or `Cache-Control: no-store` bypassing, `HEAD`, and a body over the cache's
//! limit passing through whole.

use std::io::Read;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use tiercache::Mode;

use crate::helpers::{Db, TestApp, TestEnv, in_each_mode, report};

/// A raw answer: status, headers, body bytes.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn x_cache(&self) -> Option<&str> {
        self.header("x-cache")
    }
}

async fn raw(app: &TestApp, method: Method, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut req = app.client.request(method, format!("{}{path}", app.base));
    for (n, v) in headers {
        req = req.header(*n, HeaderValue::from_str(v).unwrap());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    Raw {
        status,
        headers,
        body,
    }
}

async fn seeded(mode: Mode) -> (TestEnv, TestApp) {
    let env = TestEnv::in_mode(Db::Sqlite, mode);
    let app = env.app().await;
    assert_eq!(
        app.post_report(report("http/app", "v1", &["HIGH", "LOW"]))
            .await
            .status,
        201
    );
    (env, app)
}

in_each_mode!(
    etags_answer_304_until_a_write_changes_the_body,
    gzip_variants_are_kept_apart,
    credentials_and_no_store_bypass,
    head_reads_the_get_entry,
    a_body_over_the_limit_streams_through_uncached,
);

async fn etags_answer_304_until_a_write_changes_the_body(mode: Mode) {
    let (_env, app) = seeded(mode).await;
    let path = "/api/images";
    let first = raw(&app, Method::GET, path, &[]).await;
    assert_eq!((first.status, first.x_cache()), (200, Some("MISS")));
    let etag = first.header("etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
    let queries = app.store.queries();
    let again = raw(&app, Method::GET, path, &[("if-none-match", &etag)]).await;
    assert_eq!((again.status, again.x_cache()), (304, Some("HIT")));
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert!(again.header("age").is_some(), "a hit says its Age");
    assert_eq!(
        again.header("vary"),
        Some("accept-encoding"),
        "a 304 carries the Vary a 200 would"
    );
    // Weak comparison, in a list.
    let listed = format!("\"nope\", W/{etag}");
    let weak = raw(&app, Method::GET, path, &[("if-none-match", &listed)]).await;
    assert_eq!(weak.status, 304);
    assert_eq!(
        app.store.queries(),
        queries,
        "a 304 never reaches the database"
    );
    let other = raw(&app, Method::GET, path, &[("if-none-match", "\"nope\"")]).await;
    assert_eq!((other.status, other.body), (200, first.body.clone()));

    // A write changes the index: the old ETag no longer matches, the new body has a new one.
    assert_eq!(
        app.post_report(report("http/other", "v1", &["LOW"]))
            .await
            .status,
        201
    );
    let after = raw(&app, Method::GET, path, &[("if-none-match", &etag)]).await;
    assert_eq!((after.status, after.x_cache()), (200, Some("MISS")));
    assert_ne!(after.header("etag"), Some(etag.as_str()));
    assert_ne!(after.body, first.body);
}

async fn gzip_variants_are_kept_apart(mode: Mode) {
    let (_env, app) = seeded(mode).await;
    let path = "/api/vulnerabilities";
    let gz = [("accept-encoding", "gzip")];
    let plain = raw(&app, Method::GET, path, &[]).await;
    assert_eq!(plain.x_cache(), Some("MISS"));
    assert!(plain.header("content-encoding").is_none());
    let zipped = raw(&app, Method::GET, path, &gz).await;
    assert_eq!(
        (zipped.x_cache(), zipped.header("content-encoding")),
        (Some("MISS"), Some("gzip")),
        "the gzip variant is an entry of its own"
    );
    assert_eq!(zipped.header("vary"), Some("accept-encoding"));
    for _ in 0..2 {
        let a = raw(&app, Method::GET, path, &gz).await;
        assert_eq!(
            (a.x_cache(), a.header("content-encoding")),
            (Some("HIT"), Some("gzip"))
        );
        assert_eq!(a.body, zipped.body);
        let b = raw(&app, Method::GET, path, &[]).await;
        assert_eq!(
            (b.x_cache(), b.header("content-encoding")),
            (Some("HIT"), None),
            "a client without gzip never gets the gzip variant"
        );
        assert_eq!(b.body, plain.body);
    }
    let mut unzipped = Vec::new();
    flate2_decode(&zipped.body, &mut unzipped);
    assert_eq!(unzipped, plain.body, "both variants say the same");
    assert_ne!(zipped.header("etag"), plain.header("etag"));
}

/// Decodes a gzip body.
fn flate2_decode(gz: &[u8], out: &mut Vec<u8>) {
    flate2::read::GzDecoder::new(gz).read_to_end(out).unwrap();
}

async fn credentials_and_no_store_bypass(mode: Mode) {
    let (_env, app) = seeded(mode).await;
    let path = "/api/insights";
    let warm = raw(&app, Method::GET, path, &[]).await;
    assert_eq!(warm.x_cache(), Some("MISS"));
    assert_eq!(
        raw(&app, Method::GET, path, &[]).await.x_cache(),
        Some("HIT")
    );
    for headers in [
        [("authorization", "Bearer someone")],
        [("cookie", "session=abc")],
        [("cache-control", "no-store")],
        [("cache-control", "private")],
    ] {
        for _ in 0..2 {
            let a = raw(&app, Method::GET, path, &headers).await;
            assert_eq!(
                (a.status, a.x_cache()),
                (200, Some("BYPASS")),
                "{headers:?}"
            );
            assert_eq!(a.body, warm.body, "{headers:?}");
        }
    }
    // The list route runs its query for each bypassing request: nothing was served from, or
    // stored in, the response cache for them.
    let before = app.store.queries();
    for _ in 0..3 {
        let a = raw(
            &app,
            Method::GET,
            "/api/scan-results",
            &[("authorization", "Bearer someone")],
        )
        .await;
        assert_eq!(a.x_cache(), Some("BYPASS"));
    }
    assert_eq!(app.store.queries() - before, 3);
    // The shared entry was never replaced by a bypassing request's answer.
    assert_eq!(
        raw(&app, Method::GET, path, &[]).await.x_cache(),
        Some("HIT")
    );
}

async fn head_reads_the_get_entry(mode: Mode) {
    let (_env, app) = seeded(mode).await;
    let path = "/api/images/http%2Fapp/latest";
    let cold = raw(&app, Method::HEAD, path, &[]).await;
    assert_eq!((cold.status, cold.x_cache()), (200, Some("MISS")));
    let get = raw(&app, Method::GET, path, &[]).await;
    assert_eq!(
        get.x_cache(),
        Some("MISS"),
        "a HEAD does not fill the cache"
    );
    let queries = app.store.queries();
    let head = raw(&app, Method::HEAD, path, &[]).await;
    assert_eq!((head.status, head.x_cache()), (200, Some("HIT")));
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(head.header("etag"), get.header("etag"));
    assert_eq!(app.store.queries(), queries);
}

async fn a_body_over_the_limit_streams_through_uncached(mode: Mode) {
    let mut env = TestEnv::in_mode(Db::Sqlite, mode);
    env.cache_max_body = 2048;
    let app = env.app().await;
    for i in 0..20 {
        let tag = format!("v{i}");
        assert_eq!(
            app.post_report(report("big/app", &tag, &["HIGH", "LOW", "MEDIUM"]))
                .await
                .status,
            201
        );
    }
    let path = "/api/scan-results";
    let before = app.store.queries();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let a = raw(&app, Method::GET, path, &[]).await;
        assert_eq!((a.status, a.x_cache()), (200, Some("MISS")));
        assert!(a.body.len() > 2048, "{} bytes", a.body.len());
        let list: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 20, "the whole body arrived");
        bodies.push(a.body);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(
        app.store.queries() - before,
        2,
        "not stored: each request ran the query"
    );
    // A small answer of the same app is still cached.
    let small = "/api/images/big%2Fapp/latest";
    assert_eq!(
        raw(&app, Method::GET, small, &[]).await.x_cache(),
        Some("MISS")
    );
    assert_eq!(
        raw(&app, Method::GET, small, &[]).await.x_cache(),
        Some("HIT")
    );
}

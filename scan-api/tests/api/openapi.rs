//! `GET /api/openapi.json` against the router and the running app: every route the router
//! serves is documented (with each of its methods), every documented operation is served and
//! answers with a documented status and a body that fits the documented schema, and `X-Cache`
//! is documented exactly on the answers that carry it.
//!
//! axum has no API that lists a router's routes, so [`routed_paths`] reads them from the
//! router's `Debug` output (axum's own route table: every route, however it was added), and
//! each route's methods are asked of the running app (a request with a method no route uses
//! answers 405 with `Allow`). If axum's `Debug` output changes shape, the test fails loudly
//! (it must find the routes it knows), never passes on an empty table.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, Db, TestApp, TestEnv, encode, report};

/// The paths of the router's routes (not the fallback's), from its `Debug` output:
/// `path_router: PathRouter { routes: {..}, node: Node { paths: {RouteId(0): "/health", ..} } }`.
fn routed_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let start = debug
        .find("path_router:")
        .expect("axum's Router Debug output names its path_router");
    let end = debug[start..]
        .find("fallback_router:")
        .map_or(debug.len(), |i| start + i);
    let section = &debug[start..end];
    let paths_at = section
        .find("node: Node { paths: {")
        .expect("axum's PathRouter Debug output lists its node's paths");
    let mut paths = BTreeSet::new();
    let mut rest = &section[paths_at..];
    while let Some(i) = rest.find("): \"") {
        rest = &rest[i + 4..];
        let mut path = String::new();
        let mut chars = rest.char_indices();
        let mut close = rest.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        path.push(escaped);
                    }
                }
                '"' => {
                    close = at;
                    break;
                }
                c => path.push(c),
            }
        }
        paths.insert(path);
        rest = &rest[close..];
    }
    paths
}

/// Whether the concrete `url` path is served by the axum route `pattern` (`{x}`: one
/// segment, `{*x}`: one or more).
fn route_serves(pattern: &str, url: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let url: Vec<&str> = url.split('/').collect();
    for (i, p) in pattern.iter().enumerate() {
        if p.starts_with("{*") {
            return url.len() > i;
        }
        let Some(u) = url.get(i) else { return false };
        if !(p.starts_with('{') && !u.is_empty() || p == u) {
            return false;
        }
    }
    pattern.len() == url.len()
}

/// `path` with each `{param}` replaced by its value in `values` (or `sample`).
fn fill(path: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        let name = rest[open + 1..close].trim_start_matches('*');
        out.push_str(values.get(name).map_or("sample", String::as_str));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every documented (method, path): lower-case method, OpenAPI path.
fn operations(spec: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                ops.push((method.clone(), path.clone()));
            }
        }
    }
    ops
}

/// The methods the running app serves at `url`, from the `Allow` of a 405; `*` for a route
/// that takes any method (a service mounted with `route_service` or `nest_service`).
async fn methods_at(app: &TestApp, url: &str) -> BTreeSet<String> {
    let probe = Method::from_bytes(b"PROBE").unwrap();
    let resp = app
        .client
        .request(probe, format!("{}{url}", app.base))
        .send()
        .await
        .unwrap();
    if resp.status() != 405 {
        return BTreeSet::from(["*".to_owned()]);
    }
    let allow = resp
        .headers()
        .get("allow")
        .unwrap_or_else(|| panic!("{url}: a 405 without Allow"))
        .to_str()
        .unwrap()
        .to_owned();
    allow
        .split(',')
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .collect()
}

/// Resolves a `$ref` to a component schema.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").expect("local $ref");
            spec["components"]["schemas"]
                .get(name)
                .unwrap_or_else(|| panic!("{r} is not in components"))
        }
        None => schema,
    }
}

/// The properties an object schema names, through `allOf`.
fn known_properties(spec: &Value, schema: &Value, out: &mut BTreeSet<String>) {
    let schema = resolve(spec, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        out.extend(props.keys().cloned());
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        known_properties(spec, part, out);
    }
}

/// Checks `value` against `schema` (types, required and undocumented fields, enums, items,
/// `allOf`, `oneOf`), naming the place of the first mismatch.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if let Some(any) = schema["oneOf"].as_array() {
        return if any.iter().any(|s| check(spec, s, value, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: {value} fits none of {any:?}"))
        };
    }
    let strict = if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            check_part(spec, part, value, at)?;
        }
        true
    } else {
        check_part(spec, schema, value, at)?;
        schema.get("properties").is_some() && schema.get("additionalProperties").is_none()
    };
    if strict {
        let mut known = BTreeSet::new();
        known_properties(spec, schema, &mut known);
        for key in value.as_object().into_iter().flat_map(|o| o.keys()) {
            if !known.contains(key) {
                return Err(format!("{at}: field {key:?} is not documented"));
            }
        }
    }
    Ok(())
}

/// The checks of [`check`] but for undocumented fields (one part of an `allOf` sees only
/// some of them).
fn check_part(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if schema["allOf"].is_array() || schema["oneOf"].is_array() {
        return check(spec, schema, value, at);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let fits = |t: &str| match t {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| fits(t)) {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            check(spec, items, v, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(obj) = value.as_object() {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !obj.contains_key(name) {
                return Err(format!("{at}: required field {name:?} is missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, v) in obj {
            if let Some(prop) = props.and_then(|p| p.get(key)) {
                check(spec, prop, v, &format!("{at}.{key}"))?;
            } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object())
            {
                check(spec, extra, v, &format!("{at}.{key}"))?;
            }
        }
    }
    Ok(())
}

/// An answer as it came: any content type (a route may serve HTML or plain text).
struct Raw {
    status: u16,
    content_type: Option<String>,
    x_cache: Option<String>,
    body: Vec<u8>,
}

impl Raw {
    /// The media type without its parameters (`text/plain; charset=utf-8` → `text/plain`).
    fn media_type(&self) -> Option<&str> {
        self.content_type
            .as_deref()
            .map(|c| c.split(';').next().unwrap_or(c).trim())
    }

    fn json(&self) -> Option<Value> {
        (self.media_type() == Some("application/json"))
            .then(|| serde_json::from_slice(&self.body).expect("a JSON answer parses"))
    }
}

/// One documented operation called on the running app, with the admin token where the
/// operation requires it.
async fn call(app: &TestApp, spec: &Value, method: &str, path: &str, url: &str) -> Raw {
    let op = &spec["paths"][path][method];
    let mut req = app.client.request(
        Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
        format!("{}{url}", app.base),
    );
    if op.get("security").is_some() {
        req = req.bearer_auth(ADMIN_TOKEN);
    }
    if method == "post" && path == "/api/scan-results" {
        req = req.header("content-type", "application/json").body(report(
            "openapi/posted",
            "v1",
            &["LOW"],
        ));
    }
    let resp = req.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, content_type, x_cache) = (
        resp.status().as_u16(),
        header("content-type"),
        header("x-cache"),
    );
    let body = resp.bytes().await.unwrap().to_vec();
    Raw {
        status,
        content_type,
        x_cache,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_operation_answers_as_documented() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;

    // The document: JSON, OpenAPI 3.x.
    let served = app.get("/api/openapi.json").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.content_type.as_deref(), Some("application/json"));
    let spec = served.body;
    let version = spec["openapi"].as_str().expect("an `openapi` version");
    assert!(version.starts_with("3."), "openapi {version}");
    assert!(spec["info"]["title"].is_string());
    let documented = operations(&spec);

    // Every route of the router, with each method it serves, is documented.
    let routed = routed_paths(&env.router().await);
    for known in ["/health", "/api/scan-results/{id}", "/api/cache/keys/{key}"] {
        assert!(
            routed.contains(known),
            "the route table read from axum's Debug output lacks {known}: {routed:?}"
        );
    }
    let mut undocumented = Vec::new();
    for route in &routed {
        let url = fill(route, &BTreeMap::new());
        for method in methods_at(&app, &url).await {
            // HEAD is served with every GET (axum) and not documented on its own.
            if method == "head" {
                continue;
            }
            let found = documented.iter().any(|(m, p)| {
                (*m == method || method == "*") && route_serves(route, &fill(p, &BTreeMap::new()))
            });
            if !found {
                undocumented.push(format!("{} {route}", method.to_uppercase()));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "routes missing from /api/openapi.json (annotate the handler with #[utoipa::path] and \
         list it in scan_api::openapi::ApiDoc): {undocumented:?}"
    );

    // Every documented operation is served, answers a documented status, with a body that
    // fits the documented schema; `X-Cache` is documented exactly where it is sent.
    let kept = app
        .post_report(report("openapi/app", "v1", &["HIGH", "LOW"]))
        .await;
    let doomed = app.post_report(report("openapi/old", "v1", &["LOW"])).await;
    assert_eq!((kept.status.as_u16(), doomed.status.as_u16()), (201, 201));
    let kept_id = kept.body["id"].as_i64().unwrap().to_string();
    let doomed_id = doomed.body["id"].as_i64().unwrap().to_string();
    // Reads first, then writes (the DELETE takes the scan no read uses).
    let mut ordered = documented.clone();
    ordered.sort_by_key(|(m, _)| m != "get");
    for (method, path) in &ordered {
        let values = BTreeMap::from([
            ("name", encode("openapi/app")),
            (
                "id",
                if method == "delete" {
                    doomed_id.clone()
                } else {
                    kept_id.clone()
                },
            ),
            ("key", "test:scan-api:none".to_owned()),
        ]);
        let url = fill(path, &values);
        // Twice for cached reads, so that the second answer is a HIT; and reads with a path
        // parameter once more with a value that names nothing (an error answer).
        let mut answers = vec![(url.clone(), call(&app, &spec, method, path, &url).await)];
        if method == "get" && answers[0].1.x_cache.is_some() {
            answers.push((url.clone(), call(&app, &spec, method, path, &url).await));
        }
        if method == "get" && path.contains('{') {
            let missing = BTreeMap::from([
                ("name", "openapi-nobody".to_owned()),
                ("id", "999999".to_owned()),
                ("key", "test:scan-api:nobody".to_owned()),
            ]);
            let url = fill(path, &missing);
            let answer = call(&app, &spec, method, path, &url).await;
            assert!(answer.status >= 400, "{url}: {}", answer.status);
            answers.push((url, answer));
        }
        for (url, answer) in answers {
            let what = format!("{} {url}", method.to_uppercase());
            let json = answer.json();
            assert!(
                answer.status != 405 && json != Some(serde_json::json!({"error": "no such route"})),
                "{what}: documented but not served ({} {json:?})",
                answer.status,
            );
            let response =
                &spec["paths"][path][method]["responses"][answer.status.to_string().as_str()];
            assert!(
                response.is_object(),
                "{what}: answered {} ({json:?}), which is not documented",
                answer.status,
            );
            let content = response["content"].as_object();
            if answer.body.is_empty() {
                assert!(content.is_none(), "{what}: a documented body, none sent");
            } else {
                let media_type = answer.media_type().unwrap_or("(none)");
                let documented = content.and_then(|c| {
                    c.iter()
                        .find(|(k, _)| k.split(';').next().map(str::trim) == Some(media_type))
                        .map(|(_, v)| v)
                });
                let documented = documented.unwrap_or_else(|| {
                    panic!("{what}: a {media_type} body, not documented ({content:?})")
                });
                if let (Some(body), Some(schema)) = (&json, documented.get("schema"))
                    && let Err(e) = check(&spec, schema, body, "body")
                {
                    panic!("{what}: the answer does not fit its schema: {e}\n{body}");
                }
            }
            let header = &response["headers"]["X-Cache"];
            match &answer.x_cache {
                Some(x) => {
                    assert!(header.is_object(), "{what}: X-Cache {x} is not documented");
                    let values = &resolve(&spec, &header["schema"])["enum"];
                    assert_eq!(values, &serde_json::json!(["HIT", "MISS", "BYPASS"]));
                    assert!(values.as_array().unwrap().iter().any(|v| v == x.as_str()));
                }
                None => assert!(
                    header.is_null(),
                    "{what}: X-Cache is documented but not sent"
                ),
            }
        }
    }

    // The cached reads are documented as such: each GET with X-Cache in its 200.
    let cached: BTreeSet<&str> = documented
        .iter()
        .filter(|(m, p)| {
            m == "get" && spec["paths"][p][m]["responses"]["200"]["headers"]["X-Cache"].is_object()
        })
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(
        cached,
        BTreeSet::from([
            "/api/images",
            "/api/images/{name}/latest",
            "/api/images/{name}/versions",
            "/api/insights",
            "/api/scan-results",
            "/api/scan-results/{id}",
            "/api/vulnerabilities",
            "/api/vulnerabilities/active",
        ])
    );

    // Admin routes require the bearer token, declared as a security scheme.
    assert_eq!(
        spec["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
    for (method, path) in &documented {
        let secured = spec["paths"][path][method].get("security").is_some();
        let admin = path.starts_with("/api/cache/")
            && !matches!(
                path.as_str(),
                "/api/cache/stats" | "/api/cache/health" | "/api/cache/invalidations"
            );
        assert_eq!(secured, admin, "{method} {path}");
    }
}

#[test]
fn the_route_matcher_follows_axum() {
    assert!(route_serves(
        "/api/images/{*rest}",
        "/api/images/a%2Fb/latest"
    ));
    assert!(route_serves("/api/images/{*rest}", "/api/images/x"));
    assert!(!route_serves("/api/images/{*rest}", "/api/images"));
    assert!(route_serves(
        "/api/scan-results/{id}",
        "/api/scan-results/7"
    ));
    assert!(!route_serves("/api/scan-results/{id}", "/api/scan-results"));
    assert!(!route_serves(
        "/api/scan-results/{id}",
        "/api/scan-results/7/x"
    ));
    assert!(route_serves("/health", "/health"));
    assert!(!route_serves("/health", "/healthz"));
    assert_eq!(
        fill(
            "/a/{name}/b/{id}",
            &BTreeMap::from([("id", "7".to_owned())])
        ),
        "/a/sample/b/7"
    );
}

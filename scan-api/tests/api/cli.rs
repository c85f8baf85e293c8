//! `scan-api cache …`, the real binary, against a running app and a real Redis: every
//! subcommand through the admin API (`--url`) and, where it applies, directly against Redis
//! (`--redis-url`), in tables and in JSON; and `CACHE_WARM_ON_START` in a real `scan-api serve`
//! process, whose readiness must not wait for the warm.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{ADMIN_TOKEN, Db, TestApp, TestEnv, encode, report, wait_until};

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts the run succeeded.
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "failed: {self:#?}");
        self
    }

    /// Asserts the run failed with a message containing `needle`.
    fn fails_with(self, needle: &str) -> Self {
        assert_eq!(self.code, Some(1), "should fail: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr should say {needle:?}: {self:#?}"
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// The value of a `label  value` line of a table.
    fn row(&self, label: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix(label)
                    .filter(|rest| rest.starts_with("  "))
                    .map(|rest| rest.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no row {label:?} in:\n{}", self.stdout))
    }
}

/// Runs `scan-api cache ARGS` with only `vars` in its environment (and `APP_ENV=test`, the
/// test apps' key space), off the runtime's threads.
async fn cli(args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scan-api"));
    cmd.env_clear()
        .env("APP_ENV", "test")
        .arg("cache")
        .args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running the scan-api binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `scan-api cache --url <app> ARGS` with the admin token.
async fn via_api(app: &TestApp, args: &[&str]) -> Run {
    let mut all = vec!["--url", app.base.as_str()];
    all.extend_from_slice(args);
    cli(&all, &[("ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

/// `scan-api cache --redis-url <env's Redis> ARGS`.
async fn via_redis(env: &TestEnv, args: &[&str]) -> Run {
    let url = env.redis.url();
    let mut all = vec!["--redis-url", url.as_str()];
    all.extend_from_slice(args);
    cli(&all, &[]).await
}

/// Which target a run uses.
#[derive(Clone, Copy, Debug)]
enum On {
    Api,
    Redis,
}

async fn via(on: On, env: &TestEnv, app: &TestApp, args: &[&str]) -> Run {
    match on {
        On::Api => via_api(app, args).await,
        On::Redis => via_redis(env, args).await,
    }
}

/// The keys Redis holds matching `pattern` (KEYS, fine on a test server), sorted.
fn redis_keys(env: &TestEnv, pattern: &str) -> Vec<String> {
    let reply = env.redis.command(&["KEYS", pattern]).unwrap();
    let mut keys: Vec<String> = reply
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.starts_with('$') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

fn resp_int(reply: &str) -> i64 {
    reply.trim().trim_start_matches(':').parse().unwrap()
}

/// Stores one report for each of `images`.
async fn store_reports(app: &TestApp, images: &[&str]) {
    for image in images {
        let a = app
            .post_report(report(image, "v1", &["CRITICAL", "HIGH", "LOW"]))
            .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
    }
}

/// GETs `path` with `Accept-Encoding: encoding` (none for `none`): status and `X-Cache`.
async fn get_variant(app: &TestApp, path: &str, encoding: &str) -> (u16, Option<String>) {
    let mut req = app.client.get(format!("{}{path}", app.base));
    if encoding != "none" {
        req = req.header("accept-encoding", encoding);
    }
    let resp = req.send().await.unwrap();
    let x = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status().as_u16();
    resp.bytes().await.unwrap();
    (status, x)
}

/// The reads a warm makes for `images`, in its order, for one encoding.
fn common_reads(images: &[&str]) -> Vec<String> {
    let mut paths = vec![
        "/api/images".to_owned(),
        "/api/insights".to_owned(),
        "/api/vulnerabilities".to_owned(),
        "/api/vulnerabilities/active".to_owned(),
    ];
    let mut sorted = images.to_vec();
    sorted.sort_unstable();
    paths.extend(
        sorted
            .iter()
            .map(|i| format!("/api/images/{}/latest", encode(i))),
    );
    paths
}

/// The (path, encoding) pairs of a warm's JSON results, sorted.
fn warmed(summary: &Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_owned(),
                r["accept_encoding"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

fn expected_pairs(images: &[&str], encodings: &[&str]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = encodings
        .iter()
        .flat_map(|e| {
            common_reads(images)
                .into_iter()
                .map(|p| (p, (*e).to_owned()))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Fills the cache with a few answers and waits until Redis holds them.
async fn fill(env: &TestEnv, app: &TestApp) {
    for p in ["/api/insights", "/api/images", "/api/vulnerabilities"] {
        assert_eq!(app.get(p).await.status, 200);
    }
    // Three responses and the insights data.
    wait_until(Duration::from_secs(5), "entries in Redis", || async {
        redis_keys(env, "test:scan-api:*").len() == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_admin_api_figures_or_redis_own() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    store_reports(&app, &["stats/a", "stats/b"]).await;
    fill(&env, &app).await;
    for p in ["/api/insights", "/api/images"] {
        assert_eq!(app.get(p).await.x_cache.as_deref(), Some("HIT"));
    }

    let cli_json = via_api(&app, &["stats", "--json"]).await.ok().json();
    let api = app.get("/api/cache/stats").await.body;
    for field in [
        "mode",
        "connected",
        "total_keys",
        "hits",
        "local_hits",
        "misses",
        "hit_rate",
        "sets",
        "deletes",
        "errors",
        "timeouts",
        "loader_runs",
        "evictions",
        "categories",
        "local",
    ] {
        assert_eq!(cli_json[field], api[field], "{field}");
    }
    assert_eq!(api["total_keys"], 4);
    assert_eq!(api["hits"], 2);
    assert!(cli_json["memory_used_bytes"].as_u64().unwrap() > 0);

    let table = via_api(&app, &["stats"]).await.ok();
    assert_eq!(table.row("mode"), "redis");
    assert_eq!(table.row("keys"), "4");
    assert_eq!(table.row("hits"), "2");
    assert_eq!(table.row("misses"), api["misses"].to_string());
    assert_eq!(
        table.row("hit rate"),
        format!("{:.1}%", api["hit_rate"].as_f64().unwrap() * 100.0)
    );
    // The categories table: a header, and one line per category with its figures.
    let analysis = &api["categories"]["analysis"];
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("analysis "))
        .unwrap();
    assert_eq!(
        line.split_whitespace().take(3).collect::<Vec<_>>(),
        [
            "analysis",
            &analysis["hits"].to_string(),
            &analysis["misses"].to_string()
        ]
    );
    assert!(table.stdout.contains("CATEGORY"), "{}", table.stdout);

    // Directly against Redis: what Redis knows; the counters are each instance's.
    let direct = via_redis(&env, &["stats", "--json"]).await.ok().json();
    assert_eq!(direct["mode"], "redis");
    assert_eq!(direct["connected"], true);
    assert_eq!(direct["total_keys"], 4);
    assert_eq!(direct["namespace"], "test:scan-api:");
    assert!(direct.get("hits").is_none());
    let table = via_redis(&env, &["stats"]).await.ok();
    assert_eq!(table.row("keys"), "4");
    assert!(table.stdout.contains("counted by each instance"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_get_and_del_through_either_target() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    store_reports(&app, &["keys/a"]).await;
    for on in [On::Api, On::Redis] {
        fill(&env, &app).await;
        let all = redis_keys(&env, "test:scan-api:*");

        let listed = via(on, &env, &app, &["keys", "--json"]).await.ok().json();
        let mut keys: Vec<String> = serde_json::from_value(listed["keys"].clone()).unwrap();
        keys.sort();
        assert_eq!(keys, all);
        assert_eq!(listed["count"], all.len());
        assert_eq!(listed["pattern"], "test:scan-api:*");

        let listed = via(on, &env, &app, &["keys", "*insights*", "--json"])
            .await
            .ok()
            .json();
        let mut keys: Vec<String> = serde_json::from_value(listed["keys"].clone()).unwrap();
        keys.sort();
        assert_eq!(keys, redis_keys(&env, "test:scan-api:*insights*"));
        assert_eq!(keys.len(), 2, "the insights response and data: {keys:?}");

        // As a table: a header, the keys, a count.
        let table = via(on, &env, &app, &["keys", "*insights*"]).await.ok();
        let lines: Vec<&str> = table.stdout.lines().collect();
        assert_eq!(lines[0], "KEY");
        let mut shown: Vec<&str> = lines[1..3].to_vec();
        shown.sort_unstable();
        assert_eq!(shown, keys);
        assert_eq!(lines[3], "2 keys matching test:scan-api:*insights*");
        assert_eq!(lines.len(), 4);

        // One key: its TTL and size as Redis has them.
        let key = keys
            .iter()
            .find(|k| k.starts_with("test:scan-api:analysis:"))
            .unwrap()
            .clone();
        let shown = via(on, &env, &app, &["get", &key, "--json"])
            .await
            .ok()
            .json();
        assert_eq!(shown["key"], key.as_str());
        let strlen = resp_int(&env.redis.command(&["STRLEN", &key]).unwrap());
        assert_eq!(shown["size_bytes"].as_i64().unwrap(), strlen);
        let pttl = resp_int(&env.redis.command(&["PTTL", &key]).unwrap());
        let ttl = shown["ttl_ms"].as_i64().unwrap();
        assert!(ttl >= pttl && ttl - pttl < 10_000, "{ttl} vs {pttl}");
        // The analysis category's 30 minutes, ±10% jitter.
        assert!((27 * 60_000 - 10_000..=33 * 60_000).contains(&ttl), "{ttl}");
        let table = via(on, &env, &app, &["get", &key]).await.ok();
        let lines: Vec<&str> = table.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{}", table.stdout);
        assert!(lines[0].starts_with("KEY ") && lines[0].contains("TTL"));
        assert!(lines[1].starts_with(&key));
        assert!(
            lines[1].ends_with(&format!("({strlen} bytes)")),
            "{}",
            lines[1]
        );

        // Deleted: gone from Redis and from the app's in-process tier.
        let done = via(on, &env, &app, &["del", &key]).await.ok();
        assert_eq!(done.stdout, format!("deleted {key}\n"));
        assert_eq!(env.redis.command(&["EXISTS", &key]).unwrap(), ":0\r\n");
        assert!(app.cache.catch_up().await);
        assert_eq!(
            app.get("/api/insights").await.x_cache.as_deref(),
            Some("MISS")
        );
        // Now there is nothing to delete, or to show.
        wait_until(Duration::from_secs(5), "the entry stored again", || async {
            env.redis.command(&["EXISTS", &key]).unwrap() == ":1\r\n"
        })
        .await;
        let _ = env.redis.command(&["UNLINK", &key]).unwrap();
        let gone = format!("no such key: {key}");
        via(on, &env, &app, &["del", &key]).await.fails_with(&gone);
        via(on, &env, &app, &["get", &key]).await.fails_with(&gone);
        // A key of another namespace is refused, not touched.
        let _ = env.redis.command(&["SET", "prod:scan-api:x", "1"]).unwrap();
        via(on, &env, &app, &["del", "prod:scan-api:x"])
            .await
            .fails_with("namespace");
        assert_eq!(
            env.redis.command(&["EXISTS", "prod:scan-api:x"]).unwrap(),
            ":1\r\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_the_namespace_and_nothing_else() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    store_reports(&app, &["clear/a"]).await;
    for other in ["prod:scan-api:x", "test:other:y", "unrelated"] {
        env.redis.command(&["SET", other, "1"]).unwrap();
    }
    for on in [On::Api, On::Redis] {
        fill(&env, &app).await;
        // Everything outside the namespace: the keys above, and tiercache's tag versions.
        let outside: Vec<String> = redis_keys(&env, "*")
            .into_iter()
            .filter(|k| !k.starts_with("test:scan-api:"))
            .collect();
        assert_eq!(outside.len(), 3 + 3, "{outside:?}");
        let cleared = via(on, &env, &app, &["clear", "--json"]).await.ok().json();
        assert_eq!(cleared["removed"], 4);
        assert_eq!(cleared["namespace"], "test:scan-api:");
        assert_eq!(redis_keys(&env, "test:scan-api:*"), Vec::<String>::new());
        assert_eq!(redis_keys(&env, "*"), outside);
        // The app's in-process tier was emptied too.
        assert!(app.cache.catch_up().await);
        assert_eq!(
            app.get("/api/images").await.x_cache.as_deref(),
            Some("MISS")
        );
        let _ = app.get("/api/insights").await;
        let _ = app.get("/api/vulnerabilities").await;
        wait_until(Duration::from_secs(5), "refilled", || async {
            redis_keys(&env, "test:scan-api:*").len() == 4
        })
        .await;
        assert_eq!(
            via(on, &env, &app, &["clear"]).await.ok().stdout,
            "removed 4 keys from namespace test:scan-api:\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_named_and_changes_nothing() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    fill(&env, &app).await;
    let url = app.base.as_str();
    cli(&["--url", url, "clear"], &[("ADMIN_TOKEN", "wrong")])
        .await
        .fails_with("ADMIN_TOKEN is wrong");
    cli(&["--url", url, "--token", "wrong", "keys"], &[])
        .await
        .fails_with("ADMIN_TOKEN is wrong");
    cli(&["--url", url, "del", "test:scan-api:x"], &[])
        .await
        .fails_with("ADMIN_TOKEN is missing");
    assert_eq!(redis_keys(&env, "test:scan-api:*").len(), 4);
    // The flag works as the variable does.
    cli(&["--url", url, "--token", ADMIN_TOKEN, "keys"], &[])
        .await
        .ok();
    // Statistics need no token.
    cli(&["--url", url, "stats"], &[]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_target_exactly() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    let redis = env.redis.url();
    cli(&["stats"], &[]).await.fails_with("no target");
    cli(&["--url", &app.base, "--redis-url", &redis, "stats"], &[])
        .await
        .fails_with("two targets");
    cli(&["--url", "https://127.0.0.1:1", "stats"], &[])
        .await
        .fails_with("https is not supported");
    // REDIS_URL in the environment is a target, which --url overrides.
    let direct = cli(&["stats", "--json"], &[("REDIS_URL", &redis)])
        .await
        .ok()
        .json();
    assert!(direct.get("hits").is_none());
    let api = cli(
        &["--url", &app.base, "stats", "--json"],
        &[("REDIS_URL", &redis)],
    )
    .await
    .ok()
    .json();
    assert!(api.get("hits").is_some());
    // Nothing listening: named.
    cli(&["--url", "http://127.0.0.1:1", "stats"], &[])
        .await
        .fails_with("cannot reach the admin API at http://127.0.0.1:1");
    cli(&["--redis-url", "redis://127.0.0.1:1", "stats"], &[])
        .await
        .fails_with("cannot reach Redis at redis://127.0.0.1:1");
    cli(&["--url", "http://127.0.0.1:1", "warm"], &[])
        .await
        .fails_with("cannot list the images to warm: GET /api/images");
}

/// Every warmed (path, encoding) answers `X-Cache: HIT` from `app`.
async fn all_hits(app: &TestApp, pairs: &[(String, String)]) {
    for (path, encoding) in pairs {
        assert_eq!(
            get_variant(app, path, encoding).await,
            (200, Some("HIT".to_owned())),
            "{path} with Accept-Encoding {encoding}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_over_http_makes_every_common_read_a_hit() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    let images = ["warm/a", "warm/b", "warm c:1"];
    store_reports(&app, &images).await;

    let summary = via_api(&app, &["warm", "--json", "--concurrency", "3"])
        .await
        .ok()
        .json();
    let expected = expected_pairs(&images, &["none", "gzip"]);
    assert_eq!(expected.len(), 14);
    assert_eq!(warmed(&summary), expected);
    assert_eq!(summary["images"], 3);
    assert_eq!(summary["requests"], 14);
    assert_eq!(summary["loaded"], 14);
    assert_eq!(summary["cached"], 0);
    assert_eq!(summary["uncached"], 0);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["encodings"], serde_json::json!(["none", "gzip"]));
    for r in summary["results"].as_array().unwrap() {
        assert_eq!((&r["status"], &r["x_cache"]), (&200.into(), &"MISS".into()));
    }
    all_hits(&app, &expected).await;

    // Again, as a table: everything was cached already.
    let again = via_api(&app, &["warm"]).await.ok();
    assert_eq!(again.row("images"), "3");
    assert_eq!(again.row("requests"), "14");
    assert_eq!(again.row("loaded (MISS)"), "0");
    assert_eq!(again.row("already cached (HIT)"), "14");
    assert_eq!(again.row("failed"), "0");
    assert!(
        again
            .stdout
            .contains("Accept-Encoding variants: none, \"gzip\"\n"),
        "{}",
        again.stdout
    );

    // A browser's variant is another entry: warmed only when asked for.
    let browser = "gzip, deflate, br, zstd";
    assert_eq!(
        get_variant(&app, "/api/insights", browser)
            .await
            .1
            .as_deref(),
        Some("MISS")
    );
    via_api(&app, &["clear"]).await.ok();
    assert!(app.cache.catch_up().await);
    let summary = via_api(
        &app,
        &[
            "warm",
            "--json",
            "--accept-encoding",
            browser,
            // Each variant once.
            "--accept-encoding",
            browser,
        ],
    )
    .await
    .ok()
    .json();
    let expected = expected_pairs(&images, &[browser]);
    assert_eq!(warmed(&summary), expected);
    assert_eq!(
        (&summary["requests"], &summary["loaded"], &summary["failed"]),
        (&7.into(), &7.into(), &0.into())
    );
    all_hits(&app, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_in_process_fills_redis_for_every_instance() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    let images = ["direct/a", "direct/b"];
    store_reports(&app, &images).await;
    let summary = via_redis(&env, &["--database-url", &env.db_url, "warm", "--json"])
        .await
        .ok()
        .json();
    let expected = expected_pairs(&images, &["none", "gzip"]);
    assert_eq!(warmed(&summary), expected);
    assert_eq!(
        (
            &summary["requests"],
            &summary["loaded"],
            &summary["cached"],
            &summary["failed"]
        ),
        (&12.into(), &12.into(), &0.into(), &0.into())
    );
    // The running instance never made these reads: it finds them in Redis.
    all_hits(&app, &expected).await;
    // A database that is not there is named, not created.
    let missing = format!("{}.missing", env.db_url);
    via_redis(&env, &["--database-url", &missing, "warm"])
        .await
        .fails_with("no such file");
}

/// A `scan-api` server process, killed (by its pid) when dropped, with its log lines.
struct Server {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(vars: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scan-api"));
        cmd.env_clear()
            .env("BIND", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting scan-api");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("scan-api: {line}");
                }
                sink.lock().unwrap().push(strip_ansi(&line));
            }
        });
        Self { child, lines }
    }

    /// The first log line containing `needle`, if any yet.
    fn line(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    async fn wait_for_line(&self, needle: &str) -> String {
        wait_until(Duration::from_secs(30), needle, || async {
            self.line(needle).is_some()
        })
        .await;
        self.line(needle).unwrap()
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_on_start_runs_after_readiness_and_leaves_hits() {
    let env = TestEnv::new(Db::Postgres);
    let app = env.app().await;
    let images = ["boot/a", "boot/b", "boot/c"];
    store_reports(&app, &images).await;
    // Hold the warm back: its first read (the image index) waits on this lock, while /health
    // (`SELECT 1`) needs no table.
    let mut conn = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE scans IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let redis = env.redis.url();
    let server = Server::start(&[
        ("DATABASE_URL", env.db_url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("APP_ENV", "test"),
        ("CACHE_WARM_ON_START", "true"),
    ]);
    let listening = server.wait_for_line("scan-api listening").await;
    let addr = listening
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {listening:?}"));
    let base = format!("http://{addr}");
    server.wait_for_line("cache warm started").await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let stats = || async {
        client
            .get(format!("{base}/api/cache/stats"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    // The two index requests (one per encoding) reach their loads, and wait there.
    wait_until(Duration::from_secs(10), "the index loads", || async {
        stats().await["loader_runs"] == 2
    })
    .await;
    // Ready while the warm waits.
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let stats = stats().await;
    assert_eq!(stats["sets"], 0, "nothing stored yet: {stats}");
    assert_eq!(
        stats["categories"]["image_metadata"]["misses"], 2,
        "{stats}"
    );
    assert!(
        server.line("cache warm finished").is_none(),
        "the warm waits on the lock"
    );

    tx.rollback().await.unwrap();
    let finished = server.wait_for_line("cache warm finished").await;
    assert!(
        finished.contains(
            "cache warm finished: 14 requests (3 images): 14 loaded, 0 already cached, \
             0 not cached, 0 failed"
        ),
        "{finished}"
    );
    // Every entry is in Redis now: an instance that never made these reads hits them (its
    // Redis calls have the test apps' patient timeout, unlike the server's 50 ms).
    let other = env.app().await;
    all_hits(&other, &expected_pairs(&images, &["none", "gzip"])).await;
}

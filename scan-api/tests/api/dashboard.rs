//! `GET /dashboard` in a real browser: Debian's `chromium`, headless, loads the page from a
//! running app on its own Redis while a background task reads (hits and misses) and one write
//! invalidates. The test reads the figures the page rendered from the DOM (each is an element
//! with `data-figure` or a category row's `data-field`, with its raw number in `data-value`) and
//! checks them against `/api/cache/stats` at that moment: the load is stopped first and the
//! stats are read before and after the page's polls, so both reads bracket what the page saw.
//! It saves screenshots at 1280×800 and 390×844 under `<target>/dashboard/`. A second test puts
//! a gateway in front that stops answering: the page says "unreachable" and keeps the figures.
//! A third attaches an alert evaluator with thresholds the figures cross: the page lists both.
//!
//! The browser runs through its command line: `--dump-dom` and `--screenshot`, each with a
//! `--virtual-time-budget`. Virtual time runs the page's timers without waiting for them in
//! real time and stands still while a fetch is pending, so `budget / refresh` polls complete
//! before the DOM is dumped, however slow the machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Db, TestApp, TestEnv, report, wait_until};

/// How long one browser run may take before the test fails.
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_the_live_figures_in_a_real_browser() {
    let chromium = chromium();
    let env = TestEnv::new(Db::Sqlite);
    // A limit, so the page shows memory against it.
    env.redis
        .command(&["CONFIG", "SET", "maxmemory", "67108864"])
        .unwrap();
    let app = Arc::new(env.app().await);
    wait_until(Duration::from_secs(5), "the in-process tier", || async {
        app.cache.stats().await.local.is_some_and(|l| l.live)
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let created = app
            .post_report(report(&format!("dash/app{i}"), "v1", &["HIGH", "LOW"]))
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        ids.push(created.body["id"].as_i64().unwrap());
    }

    // The load: the same reads again (hits) and new pages of the scan list (misses).
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (app, stop) = (app.clone(), stop.clone());
        async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = ids[(round % 3) as usize];
                for path in [
                    "/api/images".to_owned(),
                    "/api/insights".to_owned(),
                    format!("/api/scan-results/{id}"),
                    format!("/api/scan-results?limit=1&offset={round}"),
                ] {
                    assert_eq!(app.get(&path).await.status, 200, "{path}");
                }
                round += 1;
                // Pacing, not synchronisation: a little load, not a flood.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            round
        }
    });
    wait_until(Duration::from_secs(30), "some load", || async {
        app.cache.stats().await.misses > 10
    })
    .await;
    // One write, which purges its image's tags (among others).
    let written = app
        .post_report(report("dash/written", "v2", &["CRITICAL"]))
        .await;
    assert_eq!(written.status, 201, "{:?}", written.body);

    // Screenshots under load.
    let dir = target_dir().join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    for (width, height) in [(1280, 800), (390, 844)] {
        let png = dir.join(format!("dashboard-{width}x{height}.png"));
        let _ = std::fs::remove_file(&png);
        run_chromium(
            &chromium,
            vec![
                format!("--window-size={width},{height}"),
                "--virtual-time-budget=8000".into(),
                format!("--screenshot={}", png.display()),
                format!("{}/dashboard?refresh=1", app.base),
            ],
        )
        .await;
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is a PNG",
            png.display()
        );
        let dimension = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((dimension(16), dimension(20)), (width, height));
        eprintln!("screenshot: {}", png.display());
    }

    stop.store(true, Ordering::Relaxed);
    let rounds = load.await.unwrap();
    assert!(rounds > 0);

    // The page, after the load: its figures against the stats read before and after its polls.
    let before = stats_and_health(&app).await;
    let dom = run_chromium(
        &chromium,
        vec![
            "--window-size=1280,800".into(),
            "--virtual-time-budget=3000".into(),
            "--dump-dom".into(),
            format!("{}/dashboard?refresh=0.5", app.base),
        ],
    )
    .await;
    let after = stats_and_health(&app).await;
    assert_eq!(
        counters(&before.0),
        counters(&after.0),
        "nothing read the cache while the page polled"
    );
    let (stats, health) = &after;
    let page = Page::parse(&dom);

    assert_eq!(page.figure("mode").text, stats["mode"].as_str().unwrap());
    for (figure, field) in [
        ("hits", "hits"),
        ("misses", "misses"),
        ("local_hits", "local_hits"),
        ("tier_misses", "misses"),
        ("keys", "total_keys"),
    ] {
        let expected = stats[field].as_u64().unwrap();
        page.figure(figure).assert_count(expected, figure);
    }
    let redis_hits = stats["hits"].as_u64().unwrap() - stats["local_hits"].as_u64().unwrap();
    page.figure("redis_hits")
        .assert_count(redis_hits, "redis_hits");
    let hit_rate = stats["hit_rate"].as_f64().unwrap();
    assert!(
        hit_rate > 0.0 && hit_rate < 1.0,
        "hits and misses: {hit_rate}"
    );
    page.figure("hit_rate").assert_rate(hit_rate, "hit_rate");
    let used = page.figure("used_memory").number();
    assert!(used > 0.0, "Redis memory shown: {used}");
    assert_eq!(stats["maxmemory_bytes"], 67_108_864, "as configured");
    assert_eq!(page.figure("maxmemory").number(), 67_108_864.0);
    assert_eq!(page.figure("maxmemory").text, "64.0 MiB");
    let share = page.figure("memory_pct").number();
    assert!(
        share > 0.0 && share < 1.0,
        "memory against maxmemory: {share}"
    );

    // Every category, with its figures, and no other row.
    let categories = stats["categories"].as_object().unwrap();
    assert!(categories.len() >= 3, "{categories:?}");
    assert_eq!(
        page.categories
            .keys()
            .collect::<std::collections::BTreeSet<_>>(),
        categories.keys().collect(),
        "one row per category"
    );
    for (name, figures) in categories {
        let row = &page.categories[name];
        for field in ["hits", "misses", "local_hits"] {
            if let Some(n) = figures[field].as_u64() {
                row[field].assert_count(n, &format!("{name}.{field}"));
            }
        }
        let (h, m) = (
            figures["hits"].as_u64().unwrap(),
            figures["misses"].as_u64().unwrap(),
        );
        if h + m > 0 {
            row["hit_rate"].assert_rate(h as f64 / (h + m) as f64, name);
        }
    }

    // The chart has a point per poll.
    let points = dom.matches("data-series=\"total\"").count();
    assert!(points >= 2, "chart points: {points}");
    assert_eq!(
        page.attribute_of("chart", "data-points"),
        points.to_string()
    );

    // The health, the alerts and the invalidations rendered.
    assert_eq!(page.attribute_of("conn", "data-state"), "live");
    assert_eq!(page.figure("redis").state.as_deref(), Some("ok"));
    // The in-process tier's channel: live, or not, as the bracketing answers say (its lease is
    // short, so a starved machine may see it lapse; the page must say which).
    let channel = page.figure("channel");
    let live = [&before.0, stats].map(|s| s["local"]["live"].as_bool().unwrap());
    assert!(
        live.contains(&(channel.text == "live")),
        "channel {channel:?}, live: {live:?}"
    );
    assert_eq!(
        channel.state.as_deref(),
        Some(if channel.text == "live" { "ok" } else { "bad" })
    );
    // The alerts the page lists are those of the health answers bracketing its polls (the
    // same, unless one started or cleared meanwhile: then the page shows one or the other).
    let names = |health: &Value| -> Vec<String> {
        health["alerts"]
            .as_array()
            .unwrap_or_else(|| panic!("health lists alerts: {health}"))
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (first, last) = (names(&before.1), names(health));
    assert!(
        page.alerts == first || page.alerts == last,
        "the page's alerts {:?}, health's {first:?} then {last:?}",
        page.alerts
    );
    assert_eq!(
        page.attribute_of("alert-list", "data-state"),
        if page.alerts.is_empty() {
            "none"
        } else {
            "active"
        }
    );

    // The recent invalidations, as the route lists them (nothing was invalidated since the
    // load stopped); the newest is the write's, which purged its image's and its scan's tags.
    let listed = app.get("/api/cache/invalidations?limit=15").await.body;
    assert_eq!(
        page.figure("instance").text,
        listed["instance"].as_str().unwrap()
    );
    let expected: Vec<(String, String, String)> = listed["invalidations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r.get("targets").is_none(), "names need the admin token");
            let (kind, n) = (
                r["kind"].as_str().unwrap(),
                r["target_count"].as_u64().unwrap(),
            );
            let what = match (kind, n) {
                ("clear", _) => "everything".to_owned(),
                (_, 1) => format!("1 {kind}"),
                _ => format!("{n} {kind}s"),
            };
            let by = if r["own"] == true {
                "this instance".to_owned()
            } else {
                r["instance"].as_str().unwrap().to_owned()
            };
            (kind.to_owned(), what, by)
        })
        .collect();
    assert_eq!(page.invalidations, expected);
    assert_eq!(
        page.attribute_of("invalidation-rows", "data-state"),
        "listed"
    );
    let (kind, _, by) = &page.invalidations[0];
    assert_eq!((kind.as_str(), by.as_str()), ("tag", "this instance"));
    // With the admin token, the route names them: the write's image and scan come first.
    let named = app
        .admin(Method::GET, "/api/cache/invalidations?limit=15")
        .await
        .body;
    assert_eq!(named["named"], true);
    let targets = named["invalidations"][0]["targets"].to_string();
    let written_id = written.body["id"].as_i64().unwrap();
    assert!(
        targets.contains("dash%2Fwritten") && targets.contains(&format!("scan:{{{written_id}}}")),
        "the write's invalidation comes first: {targets}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_last_figures_when_the_service_becomes_unreachable() {
    let chromium = chromium();
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    for _ in 0..3 {
        assert_eq!(app.get("/api/images").await.status, 200);
    }
    let stats = app.get("/api/cache/stats").await.body;
    // The page and the JSON routes behind a gateway that answers the page's first two polls
    // (three requests each) and then `502 Bad Gateway`, as one does when the service is gone.
    let answered = Arc::new(AtomicUsize::new(0));
    let gateway = axum::Router::new()
        .merge(tiercache_axum::dashboard::router())
        .merge(tiercache_axum::admin::router(
            tiercache_axum::admin::Admin::new(app.cache.clone(), None),
        ))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let answered = answered.clone();
                async move {
                    if request.uri().path().starts_with("/api/")
                        && answered.fetch_add(1, Ordering::SeqCst) >= 6
                    {
                        return (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response();
                    }
                    next.run(request).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(scan_api::run(listener, gateway, std::future::pending()));

    let dom = run_chromium(
        &chromium,
        vec![
            "--virtual-time-budget=3000".into(),
            "--dump-dom".into(),
            format!("{base}/dashboard?refresh=0.5"),
        ],
    )
    .await;
    server.abort();
    let page = Page::parse(&dom);
    assert_eq!(page.attribute_of("conn", "data-state"), "unreachable");
    assert!(dom.contains("unreachable since"), "the page says so");
    // The figures of the last answer stay, and the chart has the two answered polls only.
    page.figure("hits")
        .assert_count(stats["hits"].as_u64().unwrap(), "hits");
    page.figure("misses")
        .assert_count(stats["misses"].as_u64().unwrap(), "misses");
    page.figure("hit_rate")
        .assert_rate(stats["hit_rate"].as_f64().unwrap(), "hit_rate");
    assert_eq!(page.attribute_of("chart", "data-points"), "2");
    assert_eq!(page.figure("redis").state.as_deref(), Some("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_the_active_alerts() {
    use tiercache_axum::alerts::{AlertConfig, Alerts, HIT_RATIO_LOW, REDIS_MEMORY_HIGH};

    let chromium = chromium();
    let env = TestEnv::new(Db::Sqlite);
    env.redis
        .command(&["CONFIG", "SET", "maxmemory", "67108864"])
        .unwrap();
    let app = env.app().await;
    // Thresholds that the figures below cross: any memory at all, any miss, from one read on;
    // a window longer than the test, so neither clears while the page polls.
    let alerts = Alerts::spawn(
        app.cache.clone(),
        AlertConfig::default()
            .interval(Duration::from_millis(50))
            .window(Duration::from_secs(600))
            .memory_ratio(0.001)
            .hit_ratio_min(1.0)
            .min_reads(1),
    )
    .unwrap();
    let router = axum::Router::new()
        .merge(tiercache_axum::dashboard::router())
        .merge(tiercache_axum::admin::router(
            tiercache_axum::admin::Admin::new(app.cache.clone(), None).alerts(alerts.clone()),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(scan_api::run(listener, router, std::future::pending()));
    // The window starts at the first evaluation: the miss below must come after it, or the
    // window would see hits only and its ratio would never fall below 1.
    wait_until(
        Duration::from_secs(10),
        "the window's first sample",
        || async { alerts.evaluations() >= 1 },
    )
    .await;
    wait_until(Duration::from_secs(10), "both alerts", || async {
        // A miss and a hit, until the evaluator has seen them.
        app.get("/api/images").await;
        alerts.active().len() == 2
    })
    .await;

    let dom = run_chromium(
        &chromium,
        vec![
            "--virtual-time-budget=2000".into(),
            "--dump-dom".into(),
            format!("{base}/dashboard?refresh=0.5"),
        ],
    )
    .await;
    server.abort();
    let page = Page::parse(&dom);
    let mut listed = page.alerts.clone();
    listed.sort();
    assert_eq!(listed, [HIT_RATIO_LOW, REDIS_MEMORY_HIGH]);
    assert_eq!(page.attribute_of("alert-list", "data-state"), "active");
    // Each with its message (whose figures move with the window: compared up to the first)
    // and its threshold.
    for alert in alerts.active() {
        let words = &alert.message[..alert.message.find(|c: char| c.is_ascii_digit()).unwrap()];
        assert!(dom.contains(words), "{} shown", alert.message);
    }
    for threshold in ["threshold 1 ", "threshold 0.001 "] {
        assert!(dom.contains(threshold), "{threshold} shown");
    }
}

/// `/api/cache/stats` and `/api/cache/health`.
async fn stats_and_health(app: &TestApp) -> (Value, Value) {
    let stats = app.get("/api/cache/stats").await;
    assert_eq!(stats.status, 200);
    let health = app.get("/api/cache/health").await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    (stats.body, health.body)
}

/// The figures that only reads and writes move (memory and uptime move by themselves).
fn counters(stats: &Value) -> Value {
    serde_json::json!([
        stats["hits"],
        stats["local_hits"],
        stats["misses"],
        stats["hit_rate"],
        stats["total_keys"],
        stats["categories"],
    ])
}

/// The `chromium` on `PATH`; the test fails, saying how to install it, without one.
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the dashboard test needs Debian's chromium, which is not on PATH: install it \
                 with `sudo apt-get install -y chromium` (scripts/test does so when it is missing)"
            )
        })
}

/// The workspace's target directory: `CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Runs headless chromium with `args` and a profile of its own; its standard output.
async fn run_chromium(chromium: &Path, args: Vec<String>) -> String {
    let chromium = chromium.to_owned();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let mut child = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > BROWSER_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium {args:?} did not finish in {BROWSER_DEADLINE:?}:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "chromium {args:?} failed ({status}):\n{}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::fs::read_to_string(&out).unwrap()
    })
    .await
    .unwrap()
}

/// One rendered figure: its text, its raw value and its state, as the page set them.
#[derive(Debug, Default)]
struct Figure {
    text: String,
    value: Option<String>,
    state: Option<String>,
}

impl Figure {
    fn number(&self) -> f64 {
        self.value
            .as_deref()
            .unwrap_or_else(|| panic!("no data-value in {self:?}"))
            .parse()
            .unwrap()
    }

    /// A count: its raw value, and its text once the thousands separators are gone.
    fn assert_count(&self, expected: u64, what: &str) {
        assert_eq!(
            self.value.as_deref(),
            Some(&*expected.to_string()),
            "{what}: {self:?}"
        );
        assert_eq!(
            self.text.replace(',', ""),
            expected.to_string(),
            "{what}: {self:?}"
        );
    }

    /// A rate: its raw value exactly, and its text as a percentage to one decimal.
    fn assert_rate(&self, expected: f64, what: &str) {
        assert_eq!(self.number(), expected, "{what}: {self:?}");
        let shown: f64 = self.text.trim_end_matches('%').parse().unwrap();
        assert!(
            (shown - expected * 100.0).abs() <= 0.05 + 1e-9,
            "{what}: {self:?} for {expected}"
        );
    }
}

/// What the test reads from the dumped DOM.
#[derive(Debug, Default)]
struct Page {
    /// By `data-figure` (the first element of each name).
    figures: HashMap<String, Figure>,
    /// Category rows: their cells by `data-field`.
    categories: HashMap<String, HashMap<String, Figure>>,
    /// Alert names, in order.
    alerts: Vec<String>,
    /// Invalidation rows: kind, targets, by whom.
    invalidations: Vec<(String, String, String)>,
    /// Attributes of elements with an `id`.
    ids: HashMap<String, HashMap<String, String>>,
}

impl Page {
    /// Reads the start tags in order (Chromium serializes attributes as `name="value"`), with
    /// the text that follows each.
    fn parse(dom: &str) -> Page {
        let mut page = Page::default();
        let mut category: Option<String> = None;
        let mut invalidation: Option<usize> = None;
        let mut rest = dom;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            let Some(end) = rest.find('>') else { break };
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if tag.starts_with('/') || tag.starts_with('!') {
                continue;
            }
            let text = unescape(&rest[..rest.find('<').unwrap_or(rest.len())]);
            let (name, attrs) = attributes(tag);
            let figure = || Figure {
                text: text.trim().to_owned(),
                value: attrs.get("data-value").cloned(),
                state: attrs.get("data-state").cloned(),
            };
            if let Some(id) = attrs.get("id") {
                page.ids.insert(id.clone(), attrs.clone());
            }
            if name == "tr" {
                category = attrs.get("data-category").cloned();
                invalidation = attrs.get("data-kind").map(|kind| {
                    page.invalidations
                        .push((kind.clone(), String::new(), String::new()));
                    page.invalidations.len() - 1
                });
                if let Some(c) = &category {
                    page.categories.entry(c.clone()).or_default();
                }
            }
            if let Some(f) = attrs.get("data-figure") {
                page.figures.entry(f.clone()).or_insert_with(figure);
            }
            if let Some(a) = attrs.get("data-alert") {
                page.alerts.push(a.clone());
            }
            if let Some(field) = attrs.get("data-field") {
                if let Some(c) = &category {
                    page.categories
                        .get_mut(c)
                        .unwrap()
                        .insert(field.clone(), figure());
                }
                if let Some(i) = invalidation {
                    let row = &mut page.invalidations[i];
                    match field.as_str() {
                        "targets" => row.1 = text.clone(),
                        "instance" => row.2 = text.clone(),
                        _ => {}
                    }
                }
            }
        }
        page
    }

    fn figure(&self, name: &str) -> &Figure {
        self.figures
            .get(name)
            .unwrap_or_else(|| panic!("no data-figure=\"{name}\" in the page"))
    }

    fn attribute_of(&self, id: &str, attribute: &str) -> String {
        self.ids
            .get(id)
            .and_then(|a| a.get(attribute))
            .unwrap_or_else(|| panic!("no #{id}[{attribute}] in the page"))
            .clone()
    }
}

/// A start tag's name and attributes.
fn attributes(tag: &str) -> (String, HashMap<String, String>) {
    let tag = tag.trim_end_matches('/');
    let (name, mut rest) = tag.split_once(char::is_whitespace).unwrap_or((tag, ""));
    let mut attrs = HashMap::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = rest[..end].to_owned();
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix("=\"") {
            let close = after.find('"').unwrap_or(after.len());
            attrs.insert(key, unescape(&after[..close]));
            rest = after.get(close + 1..).unwrap_or("");
        } else {
            attrs.insert(key, String::new());
        }
    }
    (name.to_ascii_lowercase(), attrs)
}

/// The entities Chromium's serializer writes.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

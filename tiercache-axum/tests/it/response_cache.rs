//! `ResponseCacheLayer` and `PurgeLayer` on a served router: what is stored, what is served
//! from the cache (`X-Cache`, `ETag`, `Age`, `304`), what bypasses it, and what purges it.
//! Every test counts its handlers' runs: an answer from the cache must not have run the route.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::handler::Handler;
use axum::http::header::{
    ACCEPT_LANGUAGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, IF_NONE_MATCH, SET_COOKIE,
    VARY,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};
use reqwest::Method;
use tiercache::{Cache, Category, Mode, Tag};
use tiercache_axum::response_cache::{CachePolicy, Purge, PurgeLayer, ResponseCacheLayer};
use tiercache_testkit::RedisServer;
use tokio::sync::watch;

use crate::helpers::{
    Answer, NAMESPACE, OP_TIMEOUT, PATIENCE, Runs, TestServer, cache, cache_in, serve, wait_live,
    wait_until,
};

const PAGES: Category = Category::from_static("pages");
const ITEMS: Category = Category::from_static("items");

/// A minute for 200s: no entry of a test expires by itself unless the test says so.
fn policy() -> CachePolicy {
    CachePolicy::new(PAGES).ttl(Duration::from_secs(60))
}

/// `GET path` answered by `handler` (whose state is its run counter), cached by `policy`.
fn cached<H, T>(cache: &Cache, policy: CachePolicy, runs: &Runs, handler: H) -> MethodRouter
where
    H: Handler<T, Runs>,
    T: 'static,
{
    get(handler)
        .layer(ResponseCacheLayer::new(cache.clone(), policy))
        .with_state(runs.clone())
}

/// One route at `path`, served.
async fn serve_one(path: &str, route: MethodRouter) -> TestServer {
    serve(Router::new().route(path, route)).await
}

fn assert_answer(a: &Answer, status: StatusCode, x_cache: &str, body: &str) {
    assert_eq!(
        (a.status, a.x_cache(), a.text()),
        (status, x_cache, body),
        "{a:?}"
    );
}

// --- Handlers -------------------------------------------------------------------------------

/// Says which run of the route answered: a hit must repeat the run that filled the entry.
async fn numbered(State(runs): State<Runs>) -> String {
    format!("run {}", runs.tick())
}

/// The same bytes every run, with the headers a `304` must repeat.
async fn hello(State(runs): State<Runs>) -> impl IntoResponse {
    runs.tick();
    (
        [
            (CONTENT_TYPE, "text/plain"),
            (CACHE_CONTROL, "public, max-age=60"),
            (VARY, "accept-language"),
        ],
        "hello",
    )
}

fn language(headers: &HeaderMap) -> String {
    headers
        .get(ACCEPT_LANGUAGE)
        .map_or("none", |v| v.to_str().unwrap())
        .to_owned()
}

/// Answers in the request's language and says so in `Vary`.
async fn by_language(State(runs): State<Runs>, headers: HeaderMap) -> impl IntoResponse {
    let n = runs.tick();
    (
        [(VARY, "Accept-Language")],
        format!("hello in {}, run {n}", language(&headers)),
    )
}

/// Answers in the request's language without saying so (the route declares its `Vary`).
async fn by_declared_language(State(runs): State<Runs>, headers: HeaderMap) -> String {
    let n = runs.tick();
    format!("hello in {}, run {n}", language(&headers))
}

async fn vary_all(State(runs): State<Runs>) -> impl IntoResponse {
    ([(VARY, "*")], format!("run {}", runs.tick()))
}

/// Answers for the user its credentials name.
async fn by_user(State(runs): State<Runs>, headers: HeaderMap) -> String {
    let n = runs.tick();
    let user = headers
        .get(AUTHORIZATION)
        .or_else(|| headers.get(COOKIE))
        .map_or("nobody", |v| v.to_str().unwrap());
    format!("for {user}, run {n}")
}

async fn no_store(State(runs): State<Runs>) -> impl IntoResponse {
    (
        [(CACHE_CONTROL, "no-store")],
        format!("run {}", runs.tick()),
    )
}

async fn private(State(runs): State<Runs>) -> impl IntoResponse {
    (
        [(CACHE_CONTROL, "private, max-age=60")],
        format!("run {}", runs.tick()),
    )
}

async fn sets_cookie(State(runs): State<Runs>) -> impl IntoResponse {
    (
        [(SET_COOKIE, "session=abc")],
        format!("run {}", runs.tick()),
    )
}

async fn not_found(State(runs): State<Runs>) -> impl IntoResponse {
    (StatusCode::NOT_FOUND, format!("run {}", runs.tick()))
}

const CHUNKS: usize = 64;
const CHUNK: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;

/// `len` bytes that differ from chunk to chunk and within each.
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i % 251) as u8 ^ (i / CHUNK) as u8)
        .collect()
}

/// 64 chunks of 16 KiB, of no declared length.
async fn streamed(State(runs): State<Runs>) -> Body {
    runs.tick();
    Body::from_stream(futures_util::stream::iter(
        (0..CHUNKS).map(|i| Ok::<_, Infallible>(Bytes::from(pattern(i * CHUNK, CHUNK)))),
    ))
}

/// One and a half times the limit, in one piece (its `Content-Length` says so).
async fn oversized(State(runs): State<Runs>) -> Bytes {
    runs.tick();
    Bytes::from(pattern(0, MAX_BODY * 3 / 2))
}

/// Half the limit.
async fn fits(State(runs): State<Runs>) -> Bytes {
    runs.tick();
    Bytes::from(pattern(0, MAX_BODY / 2))
}

/// A route held until the test opens its gate.
#[derive(Clone)]
struct Gate {
    runs: Runs,
    open: watch::Receiver<bool>,
}

async fn gated(State(gate): State<Gate>) -> String {
    let n = gate.runs.tick();
    gate.open.clone().wait_for(|open| *open).await.unwrap();
    format!("gated run {n}")
}

/// [`gated`], answering for one client only (it sets a cookie).
async fn gated_cookie(State(gate): State<Gate>) -> impl IntoResponse {
    let n = gate.runs.tick();
    gate.open.clone().wait_for(|open| *open).await.unwrap();
    (
        [(SET_COOKIE, format!("session={n}"))],
        format!("gated run {n}"),
    )
}

/// `GET path` answered by a gated handler, cached by [`policy`]; the sender opens the gate.
async fn serve_gated<H, T>(
    cache: &Cache,
    runs: &Runs,
    handler: H,
) -> (TestServer, watch::Sender<bool>)
where
    H: Handler<T, Gate>,
    T: 'static,
{
    let (open, gate) = watch::channel(false);
    let route = get(handler)
        .layer(ResponseCacheLayer::new(cache.clone(), policy()))
        .with_state(Gate {
            runs: runs.clone(),
            open: gate,
        });
    (serve_one("/slow", route).await, open)
}

/// Waits until `n` requests wait for the load of `GET /slow` in flight.
async fn wait_for_waiters(cache: &Cache, n: usize) {
    // The default key of `GET /slow`: method and path.
    let key = cache.key(&PAGES, ["GET", "/slow"]);
    let key = &key;
    wait_until(
        PATIENCE,
        &format!("{n} requests to wait for the load in flight"),
        || async move { cache.loads_waiting(key) == n },
    )
    .await;
}

fn item_tag(id: &str) -> Tag {
    Tag::new("item", [id])
}

async fn item(State(runs): State<Runs>, Path(id): Path<String>) -> String {
    format!("item {id}, run {}", runs.tick())
}

async fn write_item(Path(id): Path<String>) -> impl IntoResponse {
    (StatusCode::CREATED, Purge::tags([item_tag(&id)]), "stored")
}

async fn reject_item(Path(id): Path<String>) -> impl IntoResponse {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Purge::tags([item_tag(&id)]),
        "rejected",
    )
}

/// `GET /items/{id}` cached with the tag `item:{id}`; `POST /items/{id}` purges it;
/// `POST /items/{id}/reject` names it but fails; `DELETE /items/{id}` purges it by the
/// layer's own `tags_from`.
fn items_app(cache: &Cache, runs: &Runs) -> Router {
    let policy = CachePolicy::new(ITEMS)
        .ttl(Duration::from_secs(60))
        .tags_from(|req| req.path_param("id").map(item_tag).into_iter().collect());
    let purge = PurgeLayer::new(cache.clone());
    Router::new()
        .route(
            "/items/{id}",
            cached(cache, policy, runs, item)
                .merge(post(write_item).layer(purge.clone()))
                .merge(
                    axum::routing::delete(StatusCode::NO_CONTENT).layer(
                        purge.clone().tags_from(|req| {
                            req.path_param("id").map(item_tag).into_iter().collect()
                        }),
                    ),
                ),
        )
        .route("/items/{id}/reject", post(reject_item).layer(purge))
}

// --- GET, ETag, 304 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_misses_then_hits_with_a_strong_etag_and_a_304_for_it() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let policy = policy().vary([ACCEPT_LANGUAGE]);
    let server = serve_one("/hello", cached(&cache, policy, &runs, hello)).await;

    let miss = server.get("/hello").await;
    assert_answer(&miss, StatusCode::OK, "MISS", "hello");
    let etag = miss
        .header("etag")
        .expect("a stored answer has an ETag")
        .to_owned();
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "strong and quoted: {etag}"
    );
    assert_eq!(miss.header("age"), None, "a miss is not aged");
    assert_eq!(runs.get(), 1);

    let hit = server.get("/hello").await;
    assert_answer(&hit, StatusCode::OK, "HIT", "hello");
    assert_eq!(hit.header("etag"), Some(etag.as_str()));
    let age: u64 = hit.header("age").expect("a hit says Age").parse().unwrap();
    assert!(age < 60, "{age}");
    assert_eq!(hit.header("content-type"), Some("text/plain"));
    assert_eq!(runs.get(), 1, "a hit does not run the route");

    let not_modified = server.get_with("/hello", &[(IF_NONE_MATCH, &etag)]).await;
    assert_eq!(
        not_modified.status,
        StatusCode::NOT_MODIFIED,
        "{not_modified:?}"
    );
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    assert_eq!(not_modified.header("vary"), Some("accept-language"));
    assert_eq!(
        not_modified.header("cache-control"),
        Some("public, max-age=60")
    );
    assert_eq!(not_modified.x_cache(), "HIT");
    assert_eq!(runs.get(), 1, "a 304 does not run the route");

    let other = server
        .get_with("/hello", &[(IF_NONE_MATCH, "\"another\"")])
        .await;
    assert_answer(&other, StatusCode::OK, "HIT", "hello");
    assert_eq!(runs.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etag_of_a_body_is_the_same_in_every_process() {
    let redis = RedisServer::start();
    let (a, b) = (
        cache(&redis).await,
        cache_in(&redis, "rc-test-elsewhere").await,
    );
    let (runs_a, runs_b) = (Runs::default(), Runs::default());
    let policy = || policy().vary([ACCEPT_LANGUAGE]);
    let server_a = serve_one("/hello", cached(&a, policy(), &runs_a, hello)).await;
    let server_b = serve_one("/hello", cached(&b, policy(), &runs_b, hello)).await;

    let from_a = server_a.get("/hello").await;
    let from_b = server_b.get("/hello").await;
    // Each loaded its own entry (another namespace), and hashed the same bytes the same way.
    assert_eq!((from_a.x_cache(), from_b.x_cache()), ("MISS", "MISS"));
    assert_eq!((runs_a.get(), runs_b.get()), (1, 1));
    assert!(from_a.header("etag").is_some());
    assert_eq!(from_a.header("etag"), from_b.header("etag"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_in_another_order_reads_the_same_entry() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/q", cached(&cache, policy(), &runs, numbered)).await;

    assert_answer(
        &server.get("/q?a=1&b=2").await,
        StatusCode::OK,
        "MISS",
        "run 1",
    );
    assert_answer(
        &server.get("/q?b=2&a=1").await,
        StatusCode::OK,
        "HIT",
        "run 1",
    );
    assert_answer(
        &server.get("/q?a=1&b=3").await,
        StatusCode::OK,
        "MISS",
        "run 2",
    );
    assert_eq!(runs.get(), 2);
}

// --- Vary -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vary_learned_from_the_response_keys_entries_per_language() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/greet", cached(&cache, policy(), &runs, by_language)).await;
    let greet = |lang: &'static str| {
        let server = &server;
        async move { server.get_with("/greet", &[(ACCEPT_LANGUAGE, lang)]).await }
    };

    // Learned from the first answer, which was keyed without the language: not stored.
    assert_answer(
        &greet("en").await,
        StatusCode::OK,
        "MISS",
        "hello in en, run 1",
    );
    // Keyed by the language now: stored.
    assert_answer(
        &greet("en").await,
        StatusCode::OK,
        "MISS",
        "hello in en, run 2",
    );
    let en = greet("en").await;
    assert_answer(&en, StatusCode::OK, "HIT", "hello in en, run 2");
    assert_eq!(en.header("vary"), Some("Accept-Language"));
    assert_answer(
        &greet("fr").await,
        StatusCode::OK,
        "MISS",
        "hello in fr, run 3",
    );
    assert_answer(
        &greet("fr").await,
        StatusCode::OK,
        "HIT",
        "hello in fr, run 3",
    );
    assert_answer(
        &greet("en").await,
        StatusCode::OK,
        "HIT",
        "hello in en, run 2",
    );
    assert_eq!(runs.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vary_declared_on_the_route_caches_from_the_first_request() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let policy = policy().vary([ACCEPT_LANGUAGE]);
    let server = serve_one(
        "/greet",
        cached(&cache, policy, &runs, by_declared_language),
    )
    .await;
    let greet = |lang: &'static str| {
        let server = &server;
        async move { server.get_with("/greet", &[(ACCEPT_LANGUAGE, lang)]).await }
    };

    assert_answer(
        &greet("en").await,
        StatusCode::OK,
        "MISS",
        "hello in en, run 1",
    );
    assert_answer(
        &greet("en").await,
        StatusCode::OK,
        "HIT",
        "hello in en, run 1",
    );
    assert_answer(
        &greet("fr").await,
        StatusCode::OK,
        "MISS",
        "hello in fr, run 2",
    );
    assert_answer(
        &greet("fr").await,
        StatusCode::OK,
        "HIT",
        "hello in fr, run 2",
    );
    assert_answer(
        &greet("en").await,
        StatusCode::OK,
        "HIT",
        "hello in en, run 1",
    );
    assert_eq!(runs.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_star_is_never_stored() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/any", cached(&cache, policy(), &runs, vary_all)).await;

    for n in 1..=3 {
        let a = server.get("/any").await;
        assert_answer(&a, StatusCode::OK, "MISS", &format!("run {n}"));
        assert_eq!(a.header("vary"), Some("*"));
    }
    assert_eq!(runs.get(), 3);
}

// --- Credentials and Cache-Control ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_credentials_bypass_the_cache() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/me", cached(&cache, policy(), &runs, by_user)).await;
    let alice = [(AUTHORIZATION, "Bearer alice")];
    let cookie = [(COOKIE, "session=alice")];

    assert_answer(
        &server.get_with("/me", &alice).await,
        StatusCode::OK,
        "BYPASS",
        "for Bearer alice, run 1",
    );
    assert_answer(
        &server.get_with("/me", &alice).await,
        StatusCode::OK,
        "BYPASS",
        "for Bearer alice, run 2",
    );
    assert_answer(
        &server.get_with("/me", &cookie).await,
        StatusCode::OK,
        "BYPASS",
        "for session=alice, run 3",
    );
    // Nothing of theirs was stored, and the anonymous entry is not served to them.
    assert_answer(
        &server.get("/me").await,
        StatusCode::OK,
        "MISS",
        "for nobody, run 4",
    );
    assert_answer(
        &server.get("/me").await,
        StatusCode::OK,
        "HIT",
        "for nobody, run 4",
    );
    assert_answer(
        &server.get_with("/me", &alice).await,
        StatusCode::OK,
        "BYPASS",
        "for Bearer alice, run 5",
    );
    assert_eq!(runs.get(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_user_route_keeps_an_entry_per_user() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/me", cached(&cache, policy().per_user(), &runs, by_user)).await;
    let alice = [(AUTHORIZATION, "Bearer alice")];
    let bob = [(AUTHORIZATION, "Bearer bob")];
    let carol = [(COOKIE, "session=carol")];

    let cases: [(&[_], &str, &str); 7] = [
        (&alice, "MISS", "for Bearer alice, run 1"),
        (&alice, "HIT", "for Bearer alice, run 1"),
        (&bob, "MISS", "for Bearer bob, run 2"),
        (&bob, "HIT", "for Bearer bob, run 2"),
        (&carol, "MISS", "for session=carol, run 3"),
        (&carol, "HIT", "for session=carol, run 3"),
        (&alice, "HIT", "for Bearer alice, run 1"),
    ];
    for (user, x_cache, body) in cases {
        assert_answer(
            &server.get_with("/me", user).await,
            StatusCode::OK,
            x_cache,
            body,
        );
    }
    assert_answer(
        &server.get("/me").await,
        StatusCode::OK,
        "MISS",
        "for nobody, run 4",
    );
    assert_eq!(runs.get(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_saying_no_store_bypasses_the_cache() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/page", cached(&cache, policy(), &runs, numbered)).await;
    let no_store = [(CACHE_CONTROL, "no-store")];

    assert_answer(
        &server.get_with("/page", &no_store).await,
        StatusCode::OK,
        "BYPASS",
        "run 1",
    );
    assert_answer(
        &server.get_with("/page", &no_store).await,
        StatusCode::OK,
        "BYPASS",
        "run 2",
    );
    assert_answer(&server.get("/page").await, StatusCode::OK, "MISS", "run 3");
    assert_answer(&server.get("/page").await, StatusCode::OK, "HIT", "run 3");
    // Not past a stored entry either.
    assert_answer(
        &server.get_with("/page", &no_store).await,
        StatusCode::OK,
        "BYPASS",
        "run 4",
    );
    // A client's `no-cache` does not force the server past its own cache (documented).
    assert_answer(
        &server
            .get_with("/page", &[(CACHE_CONTROL, "no-cache")])
            .await,
        StatusCode::OK,
        "HIT",
        "run 3",
    );
    assert_eq!(runs.get(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_for_one_client_are_never_stored() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let (no_store_runs, private_runs, cookie_runs) =
        (Runs::default(), Runs::default(), Runs::default());
    let app = Router::new()
        .route(
            "/no-store",
            cached(&cache, policy(), &no_store_runs, no_store),
        )
        .route("/private", cached(&cache, policy(), &private_runs, private))
        .route(
            "/cookie",
            cached(&cache, policy(), &cookie_runs, sets_cookie),
        );
    let server = serve(app).await;

    for (path, runs) in [
        ("/no-store", &no_store_runs),
        ("/private", &private_runs),
        ("/cookie", &cookie_runs),
    ] {
        for n in 1..=3 {
            let a = server.get(path).await;
            assert_answer(&a, StatusCode::OK, "MISS", &format!("run {n}"));
            assert_eq!(a.header("etag"), None, "{path}: passed through as it was");
        }
        assert_eq!(runs.get(), 3, "{path}");
    }
}

// --- 404 --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_not_stored_by_default() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/gone", cached(&cache, policy(), &runs, not_found)).await;

    for n in 1..=3 {
        assert_answer(
            &server.get("/gone").await,
            StatusCode::NOT_FOUND,
            "MISS",
            &format!("run {n}"),
        );
    }
    assert_eq!(runs.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_cached_for_its_own_ttl_on_a_route_that_opts_in() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let not_found_ttl = Duration::from_secs(2);
    let policy = policy().cache_not_found(not_found_ttl);
    let server = serve_one("/gone", cached(&cache, policy, &runs, not_found)).await;

    let stored = Instant::now();
    assert_answer(
        &server.get("/gone").await,
        StatusCode::NOT_FOUND,
        "MISS",
        "run 1",
    );
    let hit = server.get("/gone").await;
    assert!(
        stored.elapsed() < not_found_ttl,
        "the machine is too slow for this test's timing"
    );
    assert_answer(&hit, StatusCode::NOT_FOUND, "HIT", "run 1");
    assert_eq!(runs.get(), 1);

    // After its own TTL (the route's TTL for 200s is a minute), it loads again, once.
    let server = &server;
    wait_until(PATIENCE, "the cached 404 to expire", || async move {
        let a = server.get("/gone").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        a.x_cache() == "MISS"
    })
    .await;
    // Not before its TTL (less a little for the wall clock it is measured with).
    assert!(stored.elapsed() + Duration::from_millis(50) >= not_found_ttl);
    assert_eq!(runs.get(), 2);
    assert_answer(
        &server.get("/gone").await,
        StatusCode::NOT_FOUND,
        "HIT",
        "run 2",
    );
    assert_eq!(runs.get(), 2);
}

// --- HEAD -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_is_answered_from_the_get_entry() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve_one("/page", cached(&cache, policy(), &runs, numbered)).await;

    let before = server.request(Method::HEAD, "/page", &[]).await;
    assert_eq!((before.status, before.x_cache()), (StatusCode::OK, "MISS"));
    assert!(before.body.is_empty());
    assert_eq!(runs.get(), 1, "no entry yet: the route ran");

    // A HEAD does not fill the cache.
    let get = server.get("/page").await;
    assert_answer(&get, StatusCode::OK, "MISS", "run 2");

    let head = server.request(Method::HEAD, "/page", &[]).await;
    assert_eq!(
        (head.status, head.x_cache()),
        (StatusCode::OK, "HIT"),
        "{head:?}"
    );
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(head.header("etag"), get.header("etag"));
    assert_eq!(runs.get(), 2, "a HEAD hit does not run the route");
}

// --- Large bodies -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_streams_through_and_is_not_stored() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let (stream_runs, oversized_runs, fits_runs) =
        (Runs::default(), Runs::default(), Runs::default());
    let limited = || policy().max_body(MAX_BODY);
    let app = Router::new()
        .route("/stream", cached(&cache, limited(), &stream_runs, streamed))
        .route(
            "/oversized",
            cached(&cache, limited(), &oversized_runs, oversized),
        )
        .route("/fits", cached(&cache, limited(), &fits_runs, fits));
    let server = serve(app).await;

    let whole = pattern(0, CHUNKS * CHUNK);
    for n in 1..=2 {
        let a = server.get("/stream").await;
        assert_eq!((a.status, a.x_cache()), (StatusCode::OK, "MISS"));
        assert_eq!(a.body.len(), whole.len());
        assert!(a.body == whole, "the streamed body arrived intact");
        assert_eq!(stream_runs.get(), n, "not stored: the route runs again");
    }

    let whole = pattern(0, MAX_BODY * 3 / 2);
    for n in 1..=2 {
        let a = server.get("/oversized").await;
        assert_eq!((a.status, a.x_cache()), (StatusCode::OK, "MISS"));
        assert_eq!(
            a.header("content-length"),
            Some(whole.len().to_string().as_str())
        );
        assert!(a.body == whole, "the body arrived intact");
        assert_eq!(oversized_runs.get(), n, "not stored: the route runs again");
    }

    // Under the limit, the same kind of body is stored.
    let whole = pattern(0, MAX_BODY / 2);
    for x_cache in ["MISS", "HIT"] {
        let a = server.get("/fits").await;
        assert_eq!((a.status, a.x_cache()), (StatusCode::OK, x_cache));
        assert!(a.body == whole);
    }
    assert_eq!(fits_runs.get(), 1);
}

// --- Coalescing -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_run_the_route_once() {
    const REQUESTS: usize = 32;
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let (server, open) = serve_gated(&cache, &runs, gated).await;
    let server = Arc::new(server);

    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.get("/slow").await })
        })
        .collect();
    wait_for_waiters(&cache, REQUESTS - 1).await;
    assert_eq!(runs.get(), 1);
    open.send(true).unwrap();

    for request in requests {
        let a = request.await.unwrap();
        assert_answer(&a, StatusCode::OK, "MISS", "gated run 1");
    }
    assert_eq!(runs.get(), 1, "one run for all {REQUESTS} requests");
    assert_answer(
        &server.get("/slow").await,
        StatusCode::OK,
        "HIT",
        "gated run 1",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_load_that_is_not_stored_run_the_route_themselves() {
    const REQUESTS: usize = 16;
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let (server, open) = serve_gated(&cache, &runs, gated_cookie).await;
    let server = Arc::new(server);

    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.get("/slow").await })
        })
        .collect();
    wait_for_waiters(&cache, REQUESTS - 1).await;
    open.send(true).unwrap();

    // The first answer sets a cookie: it is its own request's alone.
    let mut bodies = Vec::new();
    for request in requests {
        let a = request.await.unwrap();
        assert_eq!((a.status, a.x_cache()), (StatusCode::OK, "MISS"));
        let n = a.text().strip_prefix("gated run ").unwrap().to_owned();
        assert_eq!(
            a.header("set-cookie"),
            Some(format!("session={n}").as_str())
        );
        bodies.push(n);
    }
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), REQUESTS, "each request got its own answer");
    assert_eq!(runs.get(), REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_loads_when_the_request_running_the_route_goes_away() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let (server, open) = serve_gated(&cache, &runs, gated).await;
    let server = Arc::new(server);

    // The first client sends its request and hangs up while the route runs for it.
    let mut first =
        std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    std::io::Write::write_all(&mut first, b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    let runs_ref = &runs;
    wait_until(
        PATIENCE,
        "the route to run for the first client",
        || async move { runs_ref.get() == 1 },
    )
    .await;
    let second = {
        let server = server.clone();
        tokio::spawn(async move { server.get("/slow").await })
    };
    wait_for_waiters(&cache, 1).await;
    drop(first);

    // The first load was dropped with its connection: the waiter runs the route itself.
    wait_until(PATIENCE, "the waiter to run the route", || async move {
        runs_ref.get() == 2
    })
    .await;
    open.send(true).unwrap();
    assert_answer(
        &second.await.unwrap(),
        StatusCode::OK,
        "MISS",
        "gated run 2",
    );
    assert_answer(
        &server.get("/slow").await,
        StatusCode::OK,
        "HIT",
        "gated run 2",
    );
    assert_eq!(runs.get(), 2);
}

// --- Purges -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_write_purges_the_tags_it_names_and_only_those() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let runs = Runs::default();
    let server = serve(items_app(&cache, &runs)).await;

    for id in ["1", "2"] {
        assert_eq!(server.get(&format!("/items/{id}")).await.x_cache(), "MISS");
        assert_eq!(server.get(&format!("/items/{id}")).await.x_cache(), "HIT");
    }
    assert_eq!(runs.get(), 2);

    // A failed write purges nothing, whatever it named.
    let rejected = server.request(Method::POST, "/items/1/reject", &[]).await;
    assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_answer(
        &server.get("/items/1").await,
        StatusCode::OK,
        "HIT",
        "item 1, run 1",
    );

    let written = server.request(Method::POST, "/items/1", &[]).await;
    assert_eq!(written.status, StatusCode::CREATED);
    assert_answer(
        &server.get("/items/1").await,
        StatusCode::OK,
        "MISS",
        "item 1, run 3",
    );
    assert_answer(
        &server.get("/items/2").await,
        StatusCode::OK,
        "HIT",
        "item 2, run 2",
    );
    assert_answer(
        &server.get("/items/1").await,
        StatusCode::OK,
        "HIT",
        "item 1, run 3",
    );

    // The layer's own `tags_from`, with no `Purge` from the handler.
    let deleted = server.request(Method::DELETE, "/items/2", &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_answer(
        &server.get("/items/2").await,
        StatusCode::OK,
        "MISS",
        "item 2, run 4",
    );
    assert_answer(
        &server.get("/items/1").await,
        StatusCode::OK,
        "HIT",
        "item 1, run 3",
    );
    assert_eq!(runs.get(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_reaches_the_others() {
    let redis = RedisServer::start();
    let (a, b) = (cache(&redis).await, cache(&redis).await);
    let (runs_a, runs_b) = (Runs::default(), Runs::default());
    let server_a = serve(items_app(&a, &runs_a)).await;
    let server_b = serve(items_app(&b, &runs_b)).await;

    for id in ["1", "2"] {
        assert_eq!(
            server_b.get(&format!("/items/{id}")).await.x_cache(),
            "MISS"
        );
        assert_eq!(server_b.get(&format!("/items/{id}")).await.x_cache(), "HIT");
    }
    assert_eq!(runs_b.get(), 2);

    let written = server_a.request(Method::POST, "/items/1", &[]).await;
    assert_eq!(written.status, StatusCode::CREATED);
    // Reading one's writes on another instance: B applies every change made before this call.
    b.catch_up().await;
    assert_answer(
        &server_b.get("/items/1").await,
        StatusCode::OK,
        "MISS",
        "item 1, run 3",
    );
    assert_answer(
        &server_b.get("/items/2").await,
        StatusCode::OK,
        "HIT",
        "item 2, run 2",
    );
    assert_eq!(runs_a.get(), 0);
}

// --- Redis away, standalone ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_requests_bypass_and_hits_resume_when_it_is_back() {
    let mut redis = RedisServer::start();
    let cache = cache(&redis).await;
    let (runs, private_runs) = (Runs::default(), Runs::default());
    let app = Router::new()
        .route("/page", cached(&cache, policy(), &runs, numbered))
        .route("/private", cached(&cache, policy(), &private_runs, private));
    let server = serve(app).await;
    assert_answer(&server.get("/page").await, StatusCode::OK, "MISS", "run 1");
    assert_answer(&server.get("/page").await, StatusCode::OK, "HIT", "run 1");

    redis.stop();
    // The in-process tier stops serving within its lease of Redis going away.
    wait_live(&cache, false).await;
    let bound = OP_TIMEOUT + Duration::from_millis(500);
    for n in 2..=4 {
        let started = Instant::now();
        let a = server.get("/page").await;
        let took = started.elapsed();
        assert_answer(&a, StatusCode::OK, "BYPASS", &format!("run {n}"));
        assert!(took < bound, "answered in {took:?}, over {bound:?}");
    }
    // Answers that are never stored, and HEADs, say so too.
    assert_answer(
        &server.get("/private").await,
        StatusCode::OK,
        "BYPASS",
        "run 1",
    );
    let head = server.request(Method::HEAD, "/page", &[]).await;
    assert_eq!((head.status, head.x_cache()), (StatusCode::OK, "BYPASS"));
    assert_eq!(runs.get(), 5);

    redis.restart();
    let server_ref = &server;
    wait_until(
        PATIENCE,
        "hits to resume after Redis is back",
        || async move {
            let a = server_ref.get("/page").await;
            assert_eq!(a.status, StatusCode::OK);
            a.x_cache() == "HIT"
        },
    )
    .await;
    let n = runs.get();
    assert_answer(
        &server.get("/page").await,
        StatusCode::OK,
        "HIT",
        &format!("run {n}"),
    );
    assert_eq!(runs.get(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_cache_needs_no_redis() {
    let cache = Cache::builder()
        .mode(Mode::Standalone)
        .namespace(NAMESPACE)
        .local_capacity(8 << 20)
        .build()
        .await
        .unwrap();
    let runs = Runs::default();
    let server = serve_one("/page", cached(&cache, policy(), &runs, numbered)).await;

    assert_answer(&server.get("/page").await, StatusCode::OK, "MISS", "run 1");
    assert_answer(&server.get("/page").await, StatusCode::OK, "HIT", "run 1");
    assert_eq!(runs.get(), 1);
}

//! Cache warming: issue the reads the service answers most often, so that their answers are
//! cached before the first user asks for them.
//!
//! The answers are cached whole by tiercache-axum's response-cache layer (`cache_policy`), so
//! the one way to warm exactly the entries the service serves is to make the requests it
//! serves: `GET /api/images` (the image index), then, for every image it lists,
//! `GET /api/images/{name}/latest`, and `GET /api/insights`, `GET /api/vulnerabilities` and
//! `GET /api/vulnerabilities/active`. Image names are percent-encoded as the README shows
//! (`bkimminich%2Fjuice-shop`): the key is the path as sent, so a client that encodes a name
//! otherwise reads another entry.
//!
//! Each read is made once per `Accept-Encoding` variant (default: none, and `gzip`): the routes
//! compress inside the cache and key on the header's exact value, so a variant a client sends
//! is warm only if it was warmed with that very value (browsers send `gzip, deflate, br, zstd`).
//!
//! The requests go [`Via`] the application in process (driven with `oneshot`, no socket: the
//! CLI with a database and Redis, and the service's own start-up warm) or a running instance
//! over HTTP. They never carry credentials (a request with `Authorization` bypasses the cache).
//! At most `concurrency` are in flight at once; every answer's `X-Cache` says whether it was
//! loaded (`MISS`), already cached (`HIT`) or not cached (`BYPASS`: Redis away, or the cache
//! off), and the [`Summary`] counts them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::header::{ACCEPT_ENCODING, CACHE_CONTROL};
use axum::http::{HeaderValue, Request};
use serde::{Deserialize, Serialize};
use tiercache::Mode;
use tower::ServiceExt;

use crate::routes::X_CACHE;

/// Default number of requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Default `Accept-Encoding` variants: none (curl, scripts, most HTTP libraries) and `gzip`
/// (Go's net/http, reqwest and others with compression on).
pub const DEFAULT_ENCODINGS: [&str; 2] = [NO_ENCODING, "gzip"];

/// How a request without an `Accept-Encoding` header is named in options and output.
pub const NO_ENCODING: &str = "none";

/// Where the requests go.
#[derive(Clone, Debug)]
pub enum Via {
    /// The application itself, driven in process with `tower::ServiceExt::oneshot`.
    InProcess(Router),
    /// A running instance at `base` (`http://host:port`).
    Http {
        /// The client (plain HTTP).
        client: reqwest::Client,
        /// Scheme, host and port, without a trailing `/`.
        base: String,
    },
}

/// What to warm, and how hard.
#[derive(Clone, Debug)]
pub struct Options {
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// `Accept-Encoding` values, exactly as clients send them; [`NO_ENCODING`] for none.
    pub encodings: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            encodings: DEFAULT_ENCODINGS.map(str::to_owned).to_vec(),
        }
    }
}

/// One warmed request and its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Path and query, as sent.
    pub path: String,
    /// The `Accept-Encoding` sent ([`NO_ENCODING`] for none).
    pub accept_encoding: String,
    /// The answer's status; `None` when there was no answer.
    pub status: Option<u16>,
    /// The answer's `X-Cache`.
    pub x_cache: Option<String>,
    /// Why it failed: no answer, or an answer other than 2xx.
    pub error: Option<String>,
}

/// What an outcome counts as in the [`Summary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// 2xx with `X-Cache: MISS`: loaded now, and stored (unless over the size limit).
    Loaded,
    /// 2xx with `X-Cache: HIT`: it was cached already.
    Cached,
    /// 2xx with `X-Cache: BYPASS` or none: the cache did not take it (Redis away, cache off).
    Uncached,
    /// No answer, or not 2xx.
    Failed,
}

impl Outcome {
    /// What this outcome counts as.
    pub fn counted(&self) -> Counted {
        match (self.error.is_some(), self.x_cache.as_deref()) {
            (true, _) => Counted::Failed,
            (false, Some("MISS")) => Counted::Loaded,
            (false, Some("HIT")) => Counted::Cached,
            (false, _) => Counted::Uncached,
        }
    }
}

/// The result of a warm.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Images listed by the index.
    pub images: usize,
    /// Requests made.
    pub requests: usize,
    /// Answers loaded now (`X-Cache: MISS`).
    pub loaded: usize,
    /// Answers that were cached already (`X-Cache: HIT`).
    pub cached: usize,
    /// Answers the cache did not take (`X-Cache: BYPASS`).
    pub uncached: usize,
    /// Requests without a 2xx answer.
    pub failed: usize,
    /// Wall-clock time, in seconds.
    pub elapsed_seconds: f64,
    /// Requests per second.
    pub rate_per_second: f64,
    /// The `Accept-Encoding` variants warmed.
    pub encodings: Vec<String>,
    /// Every request, in the order planned.
    pub results: Vec<Outcome>,
}

impl Summary {
    fn new(
        images: usize,
        encodings: Vec<String>,
        results: Vec<Outcome>,
        elapsed: Duration,
    ) -> Self {
        let count = |c| results.iter().filter(|o| o.counted() == c).count();
        let secs = elapsed.as_secs_f64();
        Self {
            images,
            requests: results.len(),
            loaded: count(Counted::Loaded),
            cached: count(Counted::Cached),
            uncached: count(Counted::Uncached),
            failed: count(Counted::Failed),
            elapsed_seconds: secs,
            rate_per_second: if secs > 0.0 {
                results.len() as f64 / secs
            } else {
                0.0
            },
            encodings,
            results,
        }
    }
}

/// Progress, for a progress bar.
#[derive(Debug)]
pub enum Event<'a> {
    /// This many more requests are planned.
    Planned(u64),
    /// One request is done.
    Done(&'a Outcome),
}

/// Receives [`Event`]s, from several tasks at once.
pub type Progress = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// Why a warm could not run at all (single requests that fail are counted, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarmError {
    /// The image index, which lists what else to warm, could not be read.
    #[error("cannot list the images to warm: GET /api/images: {0}")]
    Index(String),
    /// An `Accept-Encoding` value that cannot be sent.
    #[error("invalid Accept-Encoding value {0:?}")]
    Encoding(String),
    /// A worker task ended abnormally.
    #[error("a warm task failed: {0}")]
    Task(String),
}

/// One request to make.
#[derive(Clone, Debug)]
struct Job {
    path: String,
    encoding: String,
    /// Sent with `Cache-Control: no-store`: read, not warmed (the index when its plain
    /// variant is not among those warmed).
    bypass: bool,
}

/// An answer: what the outcome records, and the body.
struct Answer {
    outcome: Outcome,
    body: Bytes,
}

/// Warms the common reads [`Via`] `via`; see the module docs for which.
pub async fn warm(via: &Via, options: &Options, progress: Progress) -> Result<Summary, WarmError> {
    let started = Instant::now();
    // Each variant once, in the order given.
    let mut encodings: Vec<String> = Vec::new();
    for e in &options.encodings {
        if e != NO_ENCODING && HeaderValue::from_str(e).is_err() {
            return Err(WarmError::Encoding(e.clone()));
        }
        if !encodings.contains(e) {
            encodings.push(e.clone());
        }
    }
    let index = "/api/images";
    let jobs: Vec<Job> = encodings
        .iter()
        .map(|e| Job {
            path: index.to_owned(),
            encoding: e.clone(),
            bypass: false,
        })
        .collect();
    progress(Event::Planned(jobs.len() as u64));
    let answers = run(via, jobs, options.concurrency, &progress).await?;
    let fetched;
    let listing = match answers
        .iter()
        .find(|a| a.outcome.accept_encoding == NO_ENCODING)
    {
        Some(plain) => plain,
        None => {
            let job = Job {
                path: index.to_owned(),
                encoding: NO_ENCODING.to_owned(),
                bypass: true,
            };
            fetched = fetch(via, &job).await;
            &fetched
        }
    };
    if let Some(why) = &listing.outcome.error {
        return Err(WarmError::Index(why.clone()));
    }
    let names = image_names(&listing.body).map_err(WarmError::Index)?;
    let mut results: Vec<Outcome> = answers.into_iter().map(|a| a.outcome).collect();

    let mut paths = vec![
        "/api/insights".to_owned(),
        "/api/vulnerabilities".to_owned(),
        "/api/vulnerabilities/active".to_owned(),
    ];
    paths.extend(
        names
            .iter()
            .map(|n| format!("/api/images/{}/latest", encode(n))),
    );
    let jobs: Vec<Job> = encodings
        .iter()
        .flat_map(|e| {
            paths.iter().map(move |p| Job {
                path: p.clone(),
                encoding: e.clone(),
                bypass: false,
            })
        })
        .collect();
    progress(Event::Planned(jobs.len() as u64));
    let answers = run(via, jobs, options.concurrency, &progress).await?;
    results.extend(answers.into_iter().map(|a| a.outcome));
    Ok(Summary::new(
        names.len(),
        encodings,
        results,
        started.elapsed(),
    ))
}

/// Warms in the background of a starting service, on its own `app`, and logs the summary:
/// what `CACHE_WARM_ON_START=true` does once the listener is bound. Readiness does not wait
/// for it. Skipped (with a log line) when the cache is off.
pub fn spawn_on_start(app: Router, mode: Mode) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if mode == Mode::Disabled {
            tracing::info!("cache warm skipped: the cache is off");
            return;
        }
        let options = Options::default();
        tracing::info!(
            concurrency = options.concurrency,
            encodings = %options.encodings.join(", "),
            "cache warm started"
        );
        match warm(&Via::InProcess(app), &options, Arc::new(|_| {})).await {
            Ok(s) => {
                let level_warn = s.failed > 0;
                let line = format!(
                    "cache warm finished: {} requests ({} images): {} loaded, {} already cached, \
                     {} not cached, {} failed in {:.2} s",
                    s.requests,
                    s.images,
                    s.loaded,
                    s.cached,
                    s.uncached,
                    s.failed,
                    s.elapsed_seconds
                );
                if level_warn {
                    let first = s.results.iter().find_map(|o| {
                        o.error
                            .as_ref()
                            .map(|e| format!("{} ({}): {e}", o.path, o.accept_encoding))
                    });
                    tracing::warn!(first_failure = first.unwrap_or_default(), "{line}");
                } else {
                    tracing::info!("{line}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cache warm failed"),
        }
    })
}

/// Makes `jobs` with at most `concurrency` in flight; answers in the order of `jobs`.
async fn run(
    via: &Via,
    jobs: Vec<Job>,
    concurrency: usize,
    progress: &Progress,
) -> Result<Vec<Answer>, WarmError> {
    let total = jobs.len();
    // The queue the workers pull from: a std Mutex, held only to pop, never across an await.
    let queue = Arc::new(Mutex::new(
        jobs.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, total.max(1)) {
        let (via, queue, progress) = (via.clone(), queue.clone(), progress.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().map_or(None, |mut q| q.pop_front());
                let Some((i, job)) = next else { break };
                let answer = fetch(&via, &job).await;
                progress(Event::Done(&answer.outcome));
                done.push((i, answer));
            }
            done
        });
    }
    let mut slots: Vec<Option<Answer>> = (0..total).map(|_| None).collect();
    while let Some(joined) = workers.join_next().await {
        let done = joined.map_err(|e| WarmError::Task(e.to_string()))?;
        for (i, answer) in done {
            slots[i] = Some(answer);
        }
    }
    slots
        .into_iter()
        .map(|a| a.ok_or_else(|| WarmError::Task("a request was lost".into())))
        .collect()
}

/// Makes one request; a failure (no answer, or not 2xx) is recorded in the outcome.
async fn fetch(via: &Via, job: &Job) -> Answer {
    let mut outcome = Outcome {
        path: job.path.clone(),
        accept_encoding: job.encoding.clone(),
        status: None,
        x_cache: None,
        error: None,
    };
    let encoding = (job.encoding != NO_ENCODING).then_some(job.encoding.as_str());
    let answered = match via {
        Via::InProcess(app) => in_process(app, &job.path, encoding, job.bypass).await,
        Via::Http { client, base } => {
            over_http(client, base, &job.path, encoding, job.bypass).await
        }
    };
    match answered {
        Ok((status, x_cache, body)) => {
            outcome.status = Some(status);
            outcome.x_cache = x_cache;
            if !(200..300).contains(&status) {
                outcome.error = Some(format!("answered {status}"));
            }
            Answer { outcome, body }
        }
        Err(why) => {
            outcome.error = Some(why);
            Answer {
                outcome,
                body: Bytes::new(),
            }
        }
    }
}

type Answered = Result<(u16, Option<String>, Bytes), String>;

async fn in_process(app: &Router, path: &str, encoding: Option<&str>, bypass: bool) -> Answered {
    let mut request = Request::get(path);
    if let Some(e) = encoding {
        request = request.header(ACCEPT_ENCODING, e);
    }
    if bypass {
        request = request.header(CACHE_CONTROL, "no-store");
    }
    let request = request.body(Body::empty()).map_err(|e| e.to_string())?;
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let x_cache = header_text(response.headers().get(X_CACHE));
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, x_cache, body))
}

async fn over_http(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    encoding: Option<&str>,
    bypass: bool,
) -> Answered {
    let mut request = client.get(format!("{base}{path}"));
    if let Some(e) = encoding {
        request = request.header(ACCEPT_ENCODING, e);
    }
    if bypass {
        request = request.header(CACHE_CONTROL, "no-store");
    }
    let response = request.send().await.map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    let x_cache = header_text(response.headers().get(X_CACHE));
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the body: {}", error_chain(&e)))?;
    Ok((status, x_cache, body))
}

fn header_text(value: Option<&HeaderValue>) -> Option<String> {
    value.and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A reqwest error as its causes, `a: b: c` (its own message only repeats the URL).
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "no answer in time".to_owned();
    }
    let mut source = e.source();
    let Some(first) = source else {
        return e.to_string();
    };
    let mut text = first.to_string();
    source = first.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The image names in a `GET /api/images` body.
fn image_names(body: &[u8]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Entry {
        image: String,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(body).map_err(|e| format!("not an image index: {e}"))?;
    Ok(entries.into_iter().map(|e| e.image).collect())
}

/// Percent-encodes a path segment: every byte but the unreserved ones (RFC 3986), in upper-case
/// hexadecimal, as the README shows (`bkimminich%2Fjuice-shop`).
pub fn encode(segment: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_as_the_readme_shows() {
        assert_eq!(encode("bkimminich/juice-shop"), "bkimminich%2Fjuice-shop");
        assert_eq!(encode("a b:c~d"), "a%20b%3Ac~d");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn outcomes_are_counted_by_status_and_x_cache() {
        let outcome = |status, x: Option<&str>, error: Option<&str>| Outcome {
            path: "/".into(),
            accept_encoding: NO_ENCODING.into(),
            status,
            x_cache: x.map(str::to_owned),
            error: error.map(str::to_owned),
        };
        assert_eq!(
            outcome(Some(200), Some("MISS"), None).counted(),
            Counted::Loaded
        );
        assert_eq!(
            outcome(Some(200), Some("HIT"), None).counted(),
            Counted::Cached
        );
        assert_eq!(
            outcome(Some(200), Some("BYPASS"), None).counted(),
            Counted::Uncached
        );
        assert_eq!(
            outcome(Some(404), Some("MISS"), Some("answered 404")).counted(),
            Counted::Failed
        );
        let s = Summary::new(
            1,
            vec![],
            vec![
                outcome(Some(200), Some("MISS"), None),
                outcome(None, None, Some("refused")),
            ],
            Duration::from_secs(2),
        );
        assert_eq!(
            (s.requests, s.loaded, s.failed, s.rate_per_second),
            (2, 1, 1, 1.0)
        );
    }

    #[test]
    fn the_index_lists_image_names() {
        let body = br#"[{"image":"a/b","scan_count":1,"latest":{}},{"image":"c"}]"#;
        assert_eq!(image_names(body).unwrap(), ["a/b", "c"]);
        assert!(image_names(b"{}").is_err());
    }
}

//! A deterministic generator of synthetic Trivy reports (SchemaVersion 2) for demos, tests and
//! load generation.
//!
//! The real fixtures are few and cannot ship with every clone, so the service and its
//! benchmarks need reports they can make up on the spot. Every report here is built from
//! invented vocabulary only (example registries, made-up teams, apps, packages, advisories and
//! OS versions), yet looks like real `trivy image --format json` output: OS and language
//! results, tags and digests, `Status`/`FixedVersion` pairs, a skewed shared pool of CVEs (so
//! some of them hit many images) and a log-normal number of findings per report.
//!
//! Report `index` depends only on the generator's seed and `index`: each report draws from its
//! own random stream, so reports can be produced in any order, in parallel, or one at a time.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::model::Severity;

/// Registries images are pushed to (all reserved or local names).
const REGISTRIES: [&str; 3] = ["registry.example.com", "localhost:5000", "ghcr.example.org"];

/// Team (namespace) names.
const TEAMS: [&str; 12] = [
    "payments", "search", "identity", "platform", "billing", "catalog", "ledger", "growth",
    "mobile", "insights", "support", "edge",
];

/// Application names.
const APPS: [&str; 24] = [
    "checkout-api",
    "cart-service",
    "auth-gateway",
    "order-worker",
    "invoice-renderer",
    "price-engine",
    "session-store",
    "notify-hub",
    "media-resizer",
    "report-builder",
    "feature-flags",
    "audit-trail",
    "geo-lookup",
    "queue-relay",
    "token-minter",
    "profile-api",
    "webhook-fanout",
    "ledger-sync",
    "admin-portal",
    "rate-limiter",
    "export-jobs",
    "catalog-indexer",
    "mail-courier",
    "metrics-proxy",
];

/// OS package names (invented).
const OS_PACKAGES: [&str; 32] = [
    "libquill",
    "marrowd",
    "fern-utils",
    "libcobalt",
    "libtwine",
    "sparrow-shell",
    "gritcrypt",
    "libnimbus",
    "dovetail",
    "libember",
    "kestrel-tools",
    "libmosaic",
    "tidepool",
    "libbrackish",
    "osprey-daemon",
    "libhalcyon",
    "quartz-core",
    "libzephyr",
    "lantern-ssl",
    "libwhorl",
    "pinecone-db",
    "libsorrel",
    "bramble-net",
    "libthistle",
    "copperhead",
    "libmarlin",
    "saffron-locale",
    "libjuniper",
    "heron-archive",
    "libtamarack",
    "wicker-xml",
    "libloam",
];

/// npm package names (invented).
const NODE_PACKAGES: [&str; 16] = [
    "tiny-arrow",
    "fetchling",
    "quokka-parse",
    "moth-router",
    "glimmer-json",
    "pebble-template",
    "left-trim-lite",
    "yarnball-utils",
    "snail-cookie",
    "otter-jwt",
    "brisk-yaml",
    "puffin-proxy",
    "minnow-validate",
    "lark-session",
    "velvet-query",
    "sprocket-cli",
];

/// Python package names (invented).
const PYTHON_PACKAGES: [&str; 12] = [
    "pyfern",
    "quillkit",
    "marrow-http",
    "tidepool-orm",
    "sparrowauth",
    "cobaltcrypt",
    "brisk-templates",
    "kestrel-xml",
    "loamdata",
    "heron-requests",
    "thistle-yaml",
    "wickerimage",
];

/// Rust crate names (invented).
const CARGO_PACKAGES: [&str; 10] = [
    "fern-core",
    "kestrel-rt",
    "twine-codec",
    "quartz-tls",
    "bramble-http",
    "osprey-proto",
    "marlin-json",
    "juniper-sync",
    "saffron-time",
    "loam-buf",
];

/// What goes wrong, for advisory titles.
const PROBLEMS: [&str; 10] = [
    "heap buffer overflow",
    "out-of-bounds read",
    "use-after-free",
    "integer overflow",
    "denial of service via crafted input",
    "path traversal",
    "prototype pollution",
    "NULL pointer dereference",
    "improper certificate validation",
    "regular expression denial of service",
];

/// Where it goes wrong, for advisory titles.
const COMPONENTS: [&str; 8] = [
    "the parser",
    "the decoder",
    "the TLS handshake",
    "archive extraction",
    "URL handling",
    "header parsing",
    "the compression layer",
    "locale handling",
];

/// Alphabet of GHSA identifiers.
const GHSA_ALPHABET: &[u8] = b"23456789cfghjmpqrvwx";

/// Size of the shared CVE pool (OS packages).
const CVE_POOL: usize = 3000;
/// Size of the shared GHSA pool (language packages).
const GHSA_POOL: usize = 800;
/// Zipf exponent of advisory popularity.
const ZIPF_EXPONENT: f64 = 1.0;
/// Most findings one report gets.
const MAX_VULNS: usize = 300;
/// `CreatedAt` of report 0, 2024-01-01T00:00:00Z.
const BASE_TIME: i64 = 1_704_067_200;
/// Seconds between consecutive reports' `CreatedAt`.
const TIME_STEP: i64 = 60;
/// Beyond this index `CreatedAt` stops increasing (it would pass the year 9999).
const MAX_TIME_INDEX: u64 = 4_000_000_000;

/// One advisory of a shared pool.
#[derive(Clone, Debug)]
struct Advisory {
    id: String,
    severity: Severity,
    /// Index into the ecosystem's package list (taken modulo its length).
    package: usize,
    title_problem: usize,
    title_component: usize,
    published: String,
}

/// Language ecosystems a report's lang-pkgs result can be about.
#[derive(Clone, Copy, Debug)]
enum Ecosystem {
    Node,
    Python,
    Cargo,
}

impl Ecosystem {
    fn trivy_type(self) -> &'static str {
        match self {
            Self::Node => "node-pkg",
            Self::Python => "python-pkg",
            Self::Cargo => "cargo",
        }
    }

    fn packages(self) -> &'static [&'static str] {
        match self {
            Self::Node => &NODE_PACKAGES,
            Self::Python => &PYTHON_PACKAGES,
            Self::Cargo => &CARGO_PACKAGES,
        }
    }

    fn purl_type(self) -> &'static str {
        match self {
            Self::Node => "npm",
            Self::Python => "pypi",
            Self::Cargo => "cargo",
        }
    }
}

/// The operating system of a synthetic image.
#[derive(Clone, Debug)]
struct Os {
    family: &'static str,
    name: String,
}

/// Generates synthetic Trivy reports; see the module documentation.
#[derive(Clone, Debug)]
pub struct Generator {
    seed: u64,
    cves: Vec<Advisory>,
    cve_cdf: Vec<f64>,
    ghsas: Vec<Advisory>,
    ghsa_cdf: Vec<f64>,
}

impl Generator {
    /// A generator whose reports are all determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(mix(seed, u64::MAX, 1));
        let mut taken = HashSet::new();
        let mut cves = Vec::with_capacity(CVE_POOL);
        while cves.len() < CVE_POOL {
            let year = rng.u32(2016..=2025);
            let id = format!("CVE-{year}-{:05}", rng.u32(1000..100_000));
            if taken.insert(id.clone()) {
                cves.push(advisory(&mut rng, id, year));
            }
        }
        let mut ghsas = Vec::with_capacity(GHSA_POOL);
        while ghsas.len() < GHSA_POOL {
            let mut id = String::from("GHSA");
            for _ in 0..3 {
                id.push('-');
                for _ in 0..4 {
                    let i = rng.usize(..GHSA_ALPHABET.len());
                    id.push(char::from(GHSA_ALPHABET.get(i).copied().unwrap_or(b'x')));
                }
            }
            if taken.insert(id.clone()) {
                let year = rng.u32(2018..=2025);
                ghsas.push(advisory(&mut rng, id, year));
            }
        }
        let cve_cdf = zipf_cdf(cves.len());
        let ghsa_cdf = zipf_cdf(ghsas.len());
        assign_severities(&mut cves, &cve_cdf);
        assign_severities(&mut ghsas, &ghsa_cdf);
        Self {
            seed,
            cves,
            cve_cdf,
            ghsas,
            ghsa_cdf,
        }
    }

    /// The image name that `report(index)` uses (repository without tag).
    ///
    /// Distinct for every index: the first 864 indices get distinct (registry, team, app)
    /// triples in a seed-dependent order, later ones add a numeric suffix to the app.
    pub fn image_name(&self, index: u64) -> String {
        const APP_COUNT: u64 = APPS.len() as u64;
        const TEAM_COUNT: u64 = TEAMS.len() as u64;
        const BLOCK: u64 = APP_COUNT * TEAM_COUNT * REGISTRIES.len() as u64;
        // 385 = 5 * 7 * 11 is coprime with BLOCK = 2^5 * 3^3: a bijection of 0..BLOCK.
        let offset = mix(self.seed, 0, 2) % BLOCK;
        let slot = ((index % BLOCK) * 385 + offset) % BLOCK;
        let round = index / BLOCK;
        let app = pick(&APPS, slot % APP_COUNT);
        let team = pick(&TEAMS, slot / APP_COUNT % TEAM_COUNT);
        let registry = pick(&REGISTRIES, slot / (APP_COUNT * TEAM_COUNT));
        if round == 0 {
            format!("{registry}/{team}/{app}")
        } else {
            format!("{registry}/{team}/{app}-{}", round + 1)
        }
    }

    /// Report number `index`: a distinct image per index (image name derived from index),
    /// deterministic for (seed, index) regardless of call order.
    pub fn report(&self, index: u64) -> Value {
        let mut rng = fastrand::Rng::with_seed(mix(self.seed, index, 3));
        let repo = self.image_name(index);
        let os = pick_os(&mut rng);

        // Tags, digests and what the user typed.
        let tag = pick_tag(&mut rng);
        let manifest_digest = format!("sha256:{}", sha256_hex(self.seed, index, ""));
        let digest_only = rng.u32(..100) < 5;
        let mut repo_tags = Vec::new();
        if !digest_only {
            repo_tags.push(format!("{repo}:{tag}"));
            if tag != "latest" && rng.u32(..100) < 15 {
                repo_tags.push(format!("{repo}:latest"));
            }
        }
        let artifact_name = if digest_only {
            format!("{repo}@{manifest_digest}")
        } else {
            format!("{repo}:{tag}")
        };

        // How many findings, and how many of them are in a language result.
        let total = vulnerability_count(&mut rng);
        let ecosystem = (rng.u32(..100) < 30).then(|| match rng.u32(..100) {
            0..60 => Ecosystem::Node,
            60..85 => Ecosystem::Python,
            _ => Ecosystem::Cargo,
        });
        let lang_count = match ecosystem {
            Some(_) if total > 0 => ((total as f64) * (0.3 + 0.5 * rng.f64())).round() as usize,
            _ => 0,
        };
        let os_count = total.saturating_sub(lang_count);

        let mut results = Vec::new();
        let os_target = format!("{artifact_name} ({} {})", os.family, os.name);
        let os_vulns = self.os_vulnerabilities(&mut rng, &os, os_count);
        let mut os_result = Map::new();
        os_result.insert("Target".into(), json!(os_target));
        os_result.insert("Class".into(), json!("os-pkgs"));
        os_result.insert("Type".into(), json!(os.family));
        if !os_vulns.is_empty() {
            os_result.insert("Vulnerabilities".into(), Value::Array(os_vulns));
        }
        results.push(Value::Object(os_result));
        if let Some(ecosystem) = ecosystem {
            results.push(self.lang_result(&mut rng, ecosystem, lang_count));
        }

        let layer_count = rng.usize(1..=8);
        let diff_ids: Vec<String> = (0..layer_count)
            .map(|i| {
                format!(
                    "sha256:{}",
                    sha256_hex(self.seed, index, &format!("layer{i}"))
                )
            })
            .collect();
        let report_hash = sha256_hex(self.seed, index, "report");
        let mut metadata = json!({
            "Size": rng.u64(4_000_000..900_000_000),
            "OS": {"Family": os.family, "Name": os.name},
            "ImageID": format!("sha256:{}", sha256_hex(self.seed, index, "config")),
            "DiffIDs": diff_ids,
            "RepoDigests": [format!("{repo}@{manifest_digest}")],
            "ImageConfig": {"architecture": "amd64", "os": "linux"},
        });
        if !repo_tags.is_empty() {
            // Trivy omits empty lists: digest-only scans have no `RepoTags` key.
            metadata["RepoTags"] = json!(repo_tags);
        }
        json!({
            "SchemaVersion": 2,
            "Trivy": {"Version": "0.0.0-synthetic"},
            "ReportID": uuid_v7_like(&report_hash),
            "CreatedAt": created_at(&mut rng, index),
            "ArtifactName": artifact_name,
            "ArtifactType": "container_image",
            "Metadata": metadata,
            "Results": results,
        })
    }

    /// `count` findings on OS packages, one installed version per package.
    fn os_vulnerabilities(&self, rng: &mut fastrand::Rng, os: &Os, count: usize) -> Vec<Value> {
        let picks = draw_distinct(rng, &self.cve_cdf, count);
        let mut installed: HashMap<usize, Semver> = HashMap::new();
        let mut vulns: Vec<Value> = picks
            .into_iter()
            .filter_map(|i| self.cves.get(i))
            .map(|adv| {
                let pkg_index = adv.package % OS_PACKAGES.len();
                let pkg = pick(&OS_PACKAGES, pkg_index as u64);
                let base = *installed
                    .entry(pkg_index)
                    .or_insert_with(|| Semver::random(rng));
                let version = os_version(os, base, base.patch);
                let fixed = os_version(os, base, base.patch + rng.u32(1..=3));
                let purl = match os.family {
                    "alpine" => format!("pkg:apk/alpine/{pkg}@{version}?distro={}", os.name),
                    "debian" | "ubuntu" => {
                        format!("pkg:deb/{}/{pkg}@{version}?distro={}", os.family, os.name)
                    }
                    _ => format!("pkg:rpm/{}/{pkg}@{version}?distro={}", os.family, os.name),
                };
                vulnerability(rng, adv, pkg, &version, &fixed, &purl, None)
            })
            .collect();
        sort_vulnerabilities(&mut vulns);
        vulns
    }

    /// A lang-pkgs result with `count` findings.
    fn lang_result(&self, rng: &mut fastrand::Rng, ecosystem: Ecosystem, count: usize) -> Value {
        let packages = ecosystem.packages();
        let picks = draw_distinct(rng, &self.ghsa_cdf, count);
        let mut installed: HashMap<usize, Semver> = HashMap::new();
        let mut vulns: Vec<Value> = picks
            .into_iter()
            .filter_map(|i| self.ghsas.get(i))
            .map(|adv| {
                let pkg_index = adv.package % packages.len();
                let pkg = pick(packages, pkg_index as u64);
                let base = *installed
                    .entry(pkg_index)
                    .or_insert_with(|| Semver::random(rng));
                let version = format!("{}.{}.{}", base.major, base.minor, base.patch);
                let fixed = lang_fixed_version(rng, base);
                let purl = format!("pkg:{}/{pkg}@{version}", ecosystem.purl_type());
                let path = match ecosystem {
                    Ecosystem::Node => Some(format!("srv/app/node_modules/{pkg}/package.json")),
                    Ecosystem::Python => Some(format!(
                        "usr/lib/python3/site-packages/{}-{version}.dist-info/METADATA",
                        pkg.replace('-', "_")
                    )),
                    Ecosystem::Cargo => None,
                };
                vulnerability(rng, adv, pkg, &version, &fixed, &purl, path)
            })
            .collect();
        sort_vulnerabilities(&mut vulns);
        let target = match ecosystem {
            Ecosystem::Node => "Node.js",
            Ecosystem::Python => "Python",
            Ecosystem::Cargo => "srv/app/Cargo.lock",
        };
        let mut result = Map::new();
        result.insert("Target".into(), json!(target));
        result.insert("Class".into(), json!("lang-pkgs"));
        result.insert("Type".into(), json!(ecosystem.trivy_type()));
        if !vulns.is_empty() {
            result.insert("Vulnerabilities".into(), Value::Array(vulns));
        }
        Value::Object(result)
    }
}

/// A pool advisory with random package and title; [`assign_severities`] sets its severity.
fn advisory(rng: &mut fastrand::Rng, id: String, year: u32) -> Advisory {
    Advisory {
        id,
        severity: Severity::Unknown,
        package: rng.usize(..1024),
        title_problem: rng.usize(..PROBLEMS.len()),
        title_component: rng.usize(..COMPONENTS.len()),
        published: format!(
            "{year}-{:02}-{:02}T{:02}:{:02}:00Z",
            rng.u32(1..=12),
            rng.u32(1..=28),
            rng.u32(..24),
            rng.u32(..60)
        ),
    }
}

/// Gives a pool's advisories severities so that, weighted by how often each is drawn (its
/// Zipf weight), findings come out about 5% CRITICAL, 20% HIGH, 40% MEDIUM, 30% LOW and 5%
/// UNKNOWN. Drawing severities independently would let the few most popular advisories skew
/// every report; instead each advisory, most popular first, takes the severity that is furthest
/// below its share so far.
fn assign_severities(pool: &mut [Advisory], cdf: &[f64]) {
    const SHARES: [(Severity, f64); 5] = [
        (Severity::Medium, 0.40),
        (Severity::Low, 0.30),
        (Severity::High, 0.20),
        (Severity::Critical, 0.05),
        (Severity::Unknown, 0.05),
    ];
    let mut assigned = [0.0f64; SHARES.len()];
    let mut before = 0.0;
    for (adv, &after) in pool.iter_mut().zip(cdf) {
        let mut best = 0;
        let mut best_deficit = f64::NEG_INFINITY;
        for (k, ((_, share), done)) in SHARES.iter().zip(&assigned).enumerate() {
            let deficit = share * after - done;
            if deficit > best_deficit {
                (best, best_deficit) = (k, deficit);
            }
        }
        if let (Some((severity, _)), Some(done)) = (SHARES.get(best), assigned.get_mut(best)) {
            adv.severity = *severity;
            *done += after - before;
        }
        before = after;
    }
}

/// One vulnerability object as Trivy writes it.
fn vulnerability(
    rng: &mut fastrand::Rng,
    adv: &Advisory,
    pkg: &str,
    version: &str,
    fixed: &str,
    purl: &str,
    pkg_path: Option<String>,
) -> Value {
    let problem = pick(&PROBLEMS, adv.title_problem as u64);
    let component = pick(&COMPONENTS, adv.title_component as u64);
    let mut v = Map::new();
    v.insert("VulnerabilityID".into(), json!(adv.id));
    v.insert("PkgID".into(), json!(format!("{pkg}@{version}")));
    v.insert("PkgName".into(), json!(pkg));
    if let Some(path) = pkg_path {
        v.insert("PkgPath".into(), json!(path));
    }
    v.insert("PkgIdentifier".into(), json!({ "PURL": purl }));
    v.insert("InstalledVersion".into(), json!(version));
    // ~70% fixed; otherwise affected or will_not_fix, and no FixedVersion (as Trivy does).
    let status = match rng.u32(..100) {
        0..70 => {
            v.insert("FixedVersion".into(), json!(fixed));
            "fixed"
        }
        70..90 => "affected",
        _ => "will_not_fix",
    };
    v.insert("Status".into(), json!(status));
    v.insert("SeveritySource".into(), json!("nvd"));
    v.insert(
        "PrimaryURL".into(),
        json!(format!("https://advisories.example.com/{}", adv.id)),
    );
    v.insert(
        "Title".into(),
        json!(format!("{pkg}: {problem} in {component}")),
    );
    v.insert(
        "Description".into(),
        json!(format!(
            "A {problem} in {component} of {pkg} allows a remote attacker to affect \
             confidentiality, integrity or availability. (Synthetic advisory.)"
        )),
    );
    v.insert("Severity".into(), json!(adv.severity.as_str()));
    let (vendor, score) = match adv.severity {
        Severity::Critical => (4, 9.8),
        Severity::High => (3, 7.5),
        Severity::Medium => (2, 5.3),
        Severity::Low => (1, 3.1),
        Severity::Unknown => (0, 0.0),
    };
    v.insert("VendorSeverity".into(), json!({ "nvd": vendor }));
    if adv.severity != Severity::Unknown {
        v.insert("CVSS".into(), json!({ "nvd": { "V3Score": score } }));
    }
    v.insert("PublishedDate".into(), json!(adv.published));
    v.insert("LastModifiedDate".into(), json!(adv.published));
    Value::Object(v)
}

/// Sorts findings the way Trivy lists them: by package, then advisory.
fn sort_vulnerabilities(vulns: &mut [Value]) {
    fn key(v: &Value) -> (&str, &str) {
        let field = |name: &str| v.get(name).and_then(Value::as_str).unwrap_or_default();
        (field("PkgName"), field("VulnerabilityID"))
    }
    vulns.sort_by(|a, b| key(a).cmp(&key(b)));
}

/// An OS with a made-up version, weighted towards alpine and debian.
fn pick_os(rng: &mut fastrand::Rng) -> Os {
    match rng.u32(..100) {
        0..35 => Os {
            family: "alpine",
            name: format!("3.{}.{}", rng.u32(15..=21), rng.u32(0..=6)),
        },
        35..65 => Os {
            family: "debian",
            name: format!("{}.{}", rng.u32(10..=13), rng.u32(1..=12)),
        },
        65..85 => Os {
            family: "ubuntu",
            name: format!(
                "{}.{}",
                rng.u32(20..=25),
                if rng.bool() { "04" } else { "10" }
            ),
        },
        _ => Os {
            family: pick(&["redhat", "rocky", "alma"], rng.u64(..3)),
            name: format!("{}.{}", rng.u32(8..=9), rng.u32(0..=10)),
        },
    }
}

/// `v1.4.2`, `2024.10.1` or `latest`.
fn pick_tag(rng: &mut fastrand::Rng) -> String {
    match rng.u32(..100) {
        0..60 => format!(
            "v{}.{}.{}",
            rng.u32(0..=5),
            rng.u32(0..=20),
            rng.u32(0..=15)
        ),
        60..90 => format!(
            "{}.{}.{}",
            rng.u32(2023..=2026),
            rng.u32(1..=12),
            rng.u32(0..=9)
        ),
        _ => "latest".to_owned(),
    }
}

/// The installed version of one package in one image.
#[derive(Clone, Copy, Debug)]
struct Semver {
    major: u32,
    minor: u32,
    patch: u32,
    /// Distribution release number (OS packages only).
    release: u32,
}

impl Semver {
    fn random(rng: &mut fastrand::Rng) -> Self {
        Self {
            major: rng.u32(0..=9),
            minor: rng.u32(0..=30),
            patch: rng.u32(0..=20),
            release: rng.u32(0..=9),
        }
    }
}

/// An OS package version in the family's format, with `patch` as its patch level.
fn os_version(os: &Os, v: Semver, patch: u32) -> String {
    let Semver {
        major,
        minor,
        release,
        ..
    } = v;
    let os_major = os.name.split('.').next().unwrap_or_default();
    match os.family {
        "alpine" => format!("{major}.{minor}.{patch}-r{release}"),
        "debian" => format!("{major}.{minor}.{patch}-{release}+deb{os_major}u1"),
        "ubuntu" => format!("{major}.{minor}.{patch}-{release}ubuntu0.1"),
        _ => format!("{major}.{minor}.{patch}-{release}.el{os_major}"),
    }
}

/// The fixed version of a language package; sometimes a list of fixed branches, as in Trivy.
fn lang_fixed_version(rng: &mut fastrand::Rng, v: Semver) -> String {
    let patch = v.patch + rng.u32(1..=3);
    if rng.u32(..100) < 20 {
        format!("{}.{}.{patch}, {}.0.0", v.major, v.minor, v.major + 1)
    } else {
        format!("{}.{}.{patch}", v.major, v.minor)
    }
}

/// Findings in one report: 5% none, else log-normal (median 10, mean about 20), at most 300.
fn vulnerability_count(rng: &mut fastrand::Rng) -> usize {
    if rng.u32(..100) < 5 {
        return 0;
    }
    // exp(N(mu, sigma^2)): median e^mu = 10, mean e^(mu + sigma^2 / 2) = 20.
    let mu = 10f64.ln();
    let sigma = (2.0 * 2f64.ln()).sqrt();
    let u1 = 1.0 - rng.f64(); // (0, 1]
    let u2 = rng.f64();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let n = (mu + sigma * z).exp().round();
    if n.is_finite() {
        (n as usize).clamp(1, MAX_VULNS)
    } else {
        1
    }
}

/// Cumulative Zipf weights for ranks `0..n`.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut total = 0.0;
    (0..n)
        .map(|rank| {
            total += 1.0 / ((rank + 1) as f64).powf(ZIPF_EXPONENT);
            total
        })
        .collect()
}

/// Up to `count` distinct ranks drawn by Zipf weight (fewer only if draws keep colliding).
fn draw_distinct(rng: &mut fastrand::Rng, cdf: &[f64], count: usize) -> Vec<usize> {
    let total = cdf.last().copied().unwrap_or(0.0);
    let mut seen = HashSet::new();
    let mut picks = Vec::with_capacity(count);
    let mut attempts = 0;
    while picks.len() < count.min(cdf.len()) && attempts < count * 20 {
        attempts += 1;
        let u = rng.f64() * total;
        let rank = cdf.partition_point(|&c| c <= u).min(cdf.len() - 1);
        if seen.insert(rank) {
            picks.push(rank);
        }
    }
    picks
}

/// `CreatedAt`: one step per index plus jitter inside the step, so it increases with index.
fn created_at(rng: &mut fastrand::Rng, index: u64) -> String {
    let step = i64::try_from(index.min(MAX_TIME_INDEX)).unwrap_or(0);
    let secs = BASE_TIME + step * TIME_STEP + rng.i64(0..TIME_STEP);
    DateTime::<Utc>::from_timestamp(secs, rng.u32(..1_000_000_000))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A UUIDv7-shaped string from a hex hash.
fn uuid_v7_like(hex: &str) -> String {
    let part = |from: usize, to: usize| hex.get(from..to).unwrap_or_default();
    format!(
        "{}-7{}-8{}-{}-{}",
        part(0, 8),
        part(8, 11),
        part(11, 14),
        part(14, 18),
        part(18, 30)
    )
}

/// Hex SHA-256 of (seed, index, label): digests and IDs that look real and never collide.
fn sha256_hex(seed: u64, index: u64, label: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(index.to_le_bytes());
    hasher.update(label.as_bytes());
    hex(&hasher.finalize())
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// SplitMix64 of (seed, index, stream): independent seeds for independent random streams.
fn mix(seed: u64, index: u64, stream: u64) -> u64 {
    let mut z = seed
        ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `list[i % len]` without indexing panics (every list here is non-empty).
fn pick<'a>(list: &[&'a str], i: u64) -> &'a str {
    let len = list.len() as u64;
    if len == 0 {
        return "";
    }
    usize::try_from(i % len)
        .ok()
        .and_then(|i| list.get(i))
        .copied()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::trivy::parse_report;

    #[test]
    fn reports_parse_and_name_their_image() {
        let generator = Generator::new(7);
        for index in 0..300 {
            let body = serde_json::to_vec(&generator.report(index)).unwrap();
            let scan = parse_report(&body)
                .unwrap_or_else(|e| panic!("report {index} does not parse: {e}"));
            assert_eq!(scan.image, generator.image_name(index), "report {index}");
            assert!(!scan.versions.is_empty(), "report {index}");
            assert!(scan.created_at.is_some());
        }
        // Far-away indices work too.
        for index in [10_000, 1 << 40, u64::MAX] {
            let body = serde_json::to_vec(&generator.report(index)).unwrap();
            let scan = parse_report(&body).unwrap();
            assert_eq!(scan.image, generator.image_name(index));
        }
    }

    #[test]
    fn deterministic_whatever_the_order() {
        let a = Generator::new(42);
        let b = Generator::new(42);
        let forward: Vec<String> = (0..20).map(|i| a.report(i).to_string()).collect();
        let backward: Vec<String> = (0..20).rev().map(|i| b.report(i).to_string()).collect();
        for (i, json) in forward.iter().enumerate() {
            assert_eq!(json, &backward[19 - i], "report {i}");
        }
        assert_eq!(
            serde_json::to_vec(&a.report(3)).unwrap(),
            serde_json::to_vec(&Generator::new(42).report(3)).unwrap()
        );
        assert_ne!(
            a.report(3).to_string(),
            Generator::new(43).report(3).to_string()
        );
    }

    #[test]
    fn distinct_images_and_increasing_created_at() {
        let generator = Generator::new(1);
        let names: HashSet<String> = (0..3000).map(|i| generator.image_name(i)).collect();
        assert_eq!(names.len(), 3000);
        let times: Vec<String> = (0..50)
            .map(|i| {
                let report = generator.report(i);
                report["CreatedAt"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        let parsed: Vec<DateTime<Utc>> = times
            .iter()
            .map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
            .collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    }

    #[test]
    fn distributions_are_plausible() {
        let generator = Generator::new(7);
        let mut totals = Vec::new();
        let mut reports_per_id: HashMap<String, usize> = HashMap::new();
        let mut severities = [0usize; 5];
        let (mut fixed, mut with_lang, mut findings) = (0, 0, 0);
        for index in 0..500 {
            let report = generator.report(index);
            let scan = parse_report(report.to_string().as_bytes()).unwrap();
            totals.push(scan.counts.total());
            let ids: HashSet<&str> = scan
                .findings
                .iter()
                .map(|f| f.vulnerability_id.as_str())
                .collect();
            for id in ids {
                *reports_per_id.entry(id.to_owned()).or_default() += 1;
            }
            for f in &scan.findings {
                findings += 1;
                severities[f.severity as usize] += 1;
                assert_eq!(
                    f.fixed_version.is_some(),
                    f.status.as_deref() == Some("fixed")
                );
                fixed += usize::from(f.fixed_version.is_some());
            }
            with_lang += usize::from(report["Results"].as_array().is_some_and(|r| r.len() > 1));
        }
        totals.sort_unstable();
        let median = totals[totals.len() / 2];
        let mean = f64::from(totals.iter().sum::<u32>()) / totals.len() as f64;
        let empty = totals.iter().filter(|&&t| t == 0).count();
        eprintln!(
            "median {median}, mean {mean:.1}, max {:?}, empty {empty}, with lang {with_lang}, \
             severities (U/L/M/H/C) {severities:?}, fixed {fixed}/{findings}",
            totals.last()
        );
        assert!((5..=20).contains(&median), "median {median}");
        assert!((10.0..=35.0).contains(&mean), "mean {mean}");
        assert!(totals.last().is_some_and(|&m| m <= 300));
        assert!((5..=50).contains(&empty), "{empty} empty reports");
        assert!(
            (75..=225).contains(&with_lang),
            "{with_lang} with lang-pkgs"
        );
        let top = reports_per_id.values().max().copied().unwrap_or(0);
        assert!(top >= 20, "most common advisory is in only {top} reports");
        let share = fixed as f64 / findings as f64;
        assert!((0.6..0.8).contains(&share), "fixed share {share}");
        let share = |s: Severity| severities[s as usize] as f64 / findings as f64;
        assert!((0.02..0.10).contains(&share(Severity::Critical)));
        assert!((0.12..0.30).contains(&share(Severity::High)));
        assert!((0.30..0.50).contains(&share(Severity::Medium)));
        assert!((0.20..0.40).contains(&share(Severity::Low)));
    }
}

//! The Docker deployment, checked without Docker (it does not run on the test machines):
//! `docker-compose.yml` parses and wires Redis 7, PostgreSQL 16 and scan-api together with
//! health checks, every variable it sets for scan-api is one scan-api reads, and the
//! `Dockerfile` builds in one stage and runs as a non-root user from another.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
    volumes: Option<BTreeMap<String, Option<IgnoredAny>>>,
}

#[derive(Debug, Deserialize)]
struct Service {
    image: Option<String>,
    build: Option<String>,
    command: Option<Vec<String>>,
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    depends_on: BTreeMap<String, Dependency>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    volumes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Dependency {
    condition: String,
}

fn repo_file(name: &str) -> String {
    let path = format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every environment variable scan-api reads: its command line's (clap), and those the cache
/// builder and the log filter read.
fn variables_read() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&scan_api::config::Cli::command(), &mut out);
    // `tiercache::CacheBuilder::from_lookup` (see `cache_setup`) and `tracing_subscriber`.
    for extra in [
        "REDIS_USERNAME",
        "REDIS_PASSWORD",
        "REDIS_DB",
        "CACHE_ENCRYPTION_KEYS",
        "RUST_LOG",
    ] {
        out.insert(extra.to_owned());
    }
    out
}

#[test]
fn the_compose_file_wires_healthy_redis_and_postgres_to_scan_api() {
    let compose: Compose = serde_saphyr::from_str(&repo_file("docker-compose.yml"))
        .unwrap_or_else(|e| panic!("docker-compose.yml does not parse: {e}"));
    let names: Vec<&str> = compose.services.keys().map(String::as_str).collect();
    assert_eq!(names, ["postgres", "redis", "scan-api"]);

    let redis = &compose.services["redis"];
    assert!(redis.image.as_deref().unwrap().starts_with("redis:7"));
    let command = redis.command.as_ref().unwrap().join(" ");
    assert!(command.contains("--maxmemory "), "{command}");
    assert!(
        command.contains("--maxmemory-policy allkeys-"),
        "a cache evicts any key under memory pressure: {command}"
    );
    let postgres = &compose.services["postgres"];
    assert!(
        postgres
            .image
            .as_deref()
            .unwrap()
            .starts_with("postgres:16")
    );
    assert!(
        postgres
            .volumes
            .iter()
            .any(|v| v.ends_with(":/var/lib/postgresql/data")),
        "the database lives on a volume"
    );
    let volumes = compose.volumes.as_ref().unwrap();
    for service in [redis, postgres] {
        let check = &service.healthcheck.as_ref().unwrap().test;
        assert!(check.len() >= 2 && check[0].starts_with("CMD"), "{check:?}");
    }
    assert!(volumes.contains_key("pgdata"));

    let api = &compose.services["scan-api"];
    assert_eq!(api.build.as_deref(), Some("."));
    for dep in ["redis", "postgres"] {
        assert_eq!(
            api.depends_on.get(dep).map(|d| d.condition.as_str()),
            Some("service_healthy"),
            "scan-api waits for a healthy {dep}"
        );
    }
    let read = variables_read();
    for name in api.environment.keys() {
        assert!(
            read.contains(name),
            "docker-compose.yml sets {name}, which scan-api does not read (it reads {read:?})"
        );
    }
    for needed in ["BIND", "DATABASE_URL", "REDIS_URL", "CACHE_MODE"] {
        assert!(api.environment.contains_key(needed), "{needed} is set");
    }
    assert_eq!(
        api.environment["DATABASE_URL"],
        "postgres://scan:scan@postgres:5432/scan"
    );
    assert_eq!(api.environment["REDIS_URL"], "redis://redis:6379");
}

#[test]
fn the_image_is_built_in_one_stage_and_runs_unprivileged_in_another() {
    let dockerfile = repo_file("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "a multi-stage build: {stages} stage(s)");
    let last_stage = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap();
    let runtime = &instructions[last_stage..];
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=")),
        "the runtime stage copies the built binary"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage names a user");
    assert!(!matches!(user.trim(), "root" | "0"), "runs as {user}");
    assert!(
        !runtime.iter().any(|l| l.contains("cargo ")),
        "no toolchain in the runtime stage"
    );
}

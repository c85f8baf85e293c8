//! `rediss://` against a real redis-server with TLS, certificates made by `openssl` for the test.
//! Built with the `tls` feature: `cargo test -p tiercache --features tls --test it tls`.

use std::path::Path;
use std::process::Command;

use tiercache_testkit::RedisServer;

use crate::helpers::cat;

use crate::helpers::builder;

/// Makes a CA and a server certificate for 127.0.0.1 signed by it; returns the CA's PEM.
fn make_certificates(dir: &Path) -> Vec<u8> {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl not found: install it with `apt-get install openssl`");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tiercache test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    std::fs::read(dir.join("ca.crt")).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server with TLS on a port of its own, with the certificates `make_certificates` put
/// in `dir`; `auth_clients`: `yes` requires client certificates. Returns the server and its
/// `rediss://` URL.
fn tls_server(dir: &std::path::Path, auth_clients: &str) -> (RedisServer, String) {
    let tls_port = free_port();
    let args = tls_args(dir, tls_port, auth_clients);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with_args(&args);
    (server, format!("rediss://127.0.0.1:{tls_port}/"))
}

/// `redis-server` arguments for TLS on `tls_port` with the certificates in `dir`.
fn tls_args(dir: &std::path::Path, tls_port: u16, auth_clients: &str) -> Vec<String> {
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path("server.crt"),
        "--tls-key-file".into(),
        path("server.key"),
        "--tls-ca-cert-file".into(),
        path("ca.crt"),
        "--tls-auth-clients".into(),
        auth_clients.into(),
    ]
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_certificates(dir.path());
    let (server, url) = tls_server(dir.path(), "no");

    let cache = builder(&server)
        .url(url.clone())
        .tls_root_certificate(ca)
        .build()
        .await
        .unwrap();
    assert!(cache.is_connected(), "TLS handshake with the private CA");
    let key = cache.key(&cat::SESSIONS, ["over-tls"]);
    cache.insert(&key, &"secret session").await;
    assert_eq!(
        cache.get::<String>(&key).await.as_deref(),
        Some("secret session")
    );
    // The value really went through the TLS port into this server.
    assert_eq!(server.command(&["EXISTS", key.as_str()]).unwrap(), ":1\r\n");

    // Without the CA the certificate is not trusted: no connection, but no build error either.
    let untrusted = builder(&server).url(url).build().await.unwrap();
    assert!(!untrusted.is_connected());
    assert_eq!(
        untrusted
            .get_with(&key, async { "from the source".to_string() })
            .await,
        "from the source"
    );

    // Certificates with a plain URL are a configuration error.
    let err = builder(&server)
        .tls_root_certificate(b"x".to_vec())
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rediss://"), "{err}");
}

/// Makes a client certificate signed by the CA in `dir` (made by [`make_certificates`]);
/// returns its certificate and key, PEM.
fn make_client_certificate(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl not found: install it with `apt-get install openssl`");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=tiercache test client",
    ]);
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "2",
        "-extfile",
        "client.cnf",
    ]);
    (
        std::fs::read(dir.join("client.crt")).unwrap(),
        std::fs::read(dir.join("client.key")).unwrap(),
    )
}

/// Mutual TLS: the server requires a client certificate. With one the cache serves from
/// Redis; without one the handshake fails and the cache falls back to the loader, bounded.
#[tokio::test]
async fn mutual_tls_requires_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_certificates(dir.path());
    let (cert, key) = make_client_certificate(dir.path());
    let (server, url) = tls_server(dir.path(), "yes");

    let cache = builder(&server)
        .url(url.clone())
        .tls_root_certificate(ca.clone())
        .tls_client_certificate(cert, key)
        .build()
        .await
        .unwrap();
    assert!(cache.is_connected(), "mutual TLS handshake");
    let key = cache.key(&cat::SESSIONS, ["mtls"]);
    cache.insert(&key, &"over mutual TLS").await;
    assert_eq!(
        cache.get::<String>(&key).await.as_deref(),
        Some("over mutual TLS")
    );
    assert_eq!(server.command(&["EXISTS", key.as_str()]).unwrap(), ":1\r\n");

    // The right CA but no client certificate: the server refuses the handshake.
    let anonymous = builder(&server)
        .url(url)
        .tls_root_certificate(ca)
        .build()
        .await
        .unwrap();
    assert!(!anonymous.is_connected());
    for i in 0..5u32 {
        let start = std::time::Instant::now();
        let v = anonymous
            .get_with(&key, async move { format!("from the source {i}") })
            .await;
        assert_eq!(v, format!("from the source {i}"));
        // The breaker opened at start-up: no call waits on the refused handshake.
        assert!(
            start.elapsed() < std::time::Duration::from_millis(100),
            "call {i} took {:?}",
            start.elapsed()
        );
    }
    assert!(anonymous.ping().await.is_err());
    assert_eq!(anonymous.stats().await.hits, 0);
}

/// A cluster whose nodes speak TLS to clients and to each other (`tls-cluster yes`): the cache
/// reaches it through `rediss://` seeds with the private CA, discovers its nodes' TLS ports,
/// and every operation, the sharded channel included, works over TLS; without the CA it falls
/// back to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_certificates(dir.path());
    let tls_ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let _cluster = tiercache_testkit::RedisCluster::start_with_node_args(|i| {
        let mut args = tls_args(dir.path(), tls_ports[i], "no");
        args.extend(["--tls-cluster".into(), "yes".into()]);
        args
    });
    let seeds: Vec<String> = tls_ports
        .iter()
        .map(|p| format!("rediss://127.0.0.1:{p}/"))
        .collect();
    let build = |ca: Option<Vec<u8>>| {
        let builder = tiercache::Cache::builder()
            .cluster_urls(seeds.clone())
            .env_prefix("test")
            .namespace("tls-cluster")
            .local_capacity(1 << 20);
        match ca {
            Some(ca) => builder.tls_root_certificate(ca),
            None => builder,
        }
        .build()
    };
    let (a, b) = (
        build(Some(ca.clone())).await.unwrap(),
        build(Some(ca)).await.unwrap(),
    );
    assert!(a.is_connected(), "TLS handshakes with the private CA");
    for c in [&a, &b] {
        crate::helpers::wait_live(c, true).await;
    }
    // Keys in many slots: every master is reached over TLS.
    let keys: Vec<_> = (0..12)
        .map(|i| a.key(&cat::SESSIONS, [format!("k{i}")]))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(b.get_with(key, async move { i }).await, i);
        a.insert(key, &(i + 100)).await;
        assert!(b.catch_up().await, "b hears a over the sharded channel");
        assert_eq!(
            b.get::<usize>(key).await,
            Some(i + 100),
            "a's insert reached b"
        );
    }
    // Every key of the category, on every master: SCAN over TLS on each.
    let p = a.key_space().pattern(&cat::SESSIONS, [] as [&str; 0]);
    assert_eq!(a.keys(&p, 100).await.unwrap().len(), keys.len());
    assert_eq!(a.invalidate_pattern(&p).await.unwrap(), keys.len() as u64);
    let untrusted = build(None).await.unwrap();
    assert!(!untrusted.is_connected(), "an unknown CA is refused");
    assert_eq!(
        untrusted.get_with(&keys[0], async { 7usize }).await,
        7,
        "and the cache falls back to the source"
    );
}

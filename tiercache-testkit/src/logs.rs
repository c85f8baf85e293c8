//! Test logging: silent unless `TEST_LOG` is set, so passing runs stay quiet and a failing one
//! can be re-run with the logs of the code under test.

use std::sync::Once;

/// Installs a `tracing` subscriber writing to the test output if `TEST_LOG` is set, with
/// `RUST_LOG` as the filter (or `default_filter` without it). Safe to call from every test.
pub fn init_test_logs(default_filter: &str) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| default_filter.into()),
                )
                .with_test_writer()
                .init();
        }
    });
}

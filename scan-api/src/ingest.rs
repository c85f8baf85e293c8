//! Bulk writes for the command line: seeding synthetic reports and importing files.
//!
//! Both write through the same [`Store`] and validation as the API, then clear this cache
//! namespace once (a bulk write changes nearly every cached answer), so a server sharing the
//! Redis never serves data older than the import. Where the server would run standalone these
//! commands run without a cache (see [`crate::cache_setup`]): nothing to clear, and a standalone
//! server does not hear of the import until its cached answers expire or it restarts.

use std::path::Path;

use tiercache::{Cache, Mode};

use crate::error::AppError;
use crate::store::Store;
use crate::synth::Generator;
use crate::trivy;

/// Reports progress: called after each report with (done, total).
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// Stores `count` synthetic reports (indices `start..start + count`) from `seed`.
pub async fn seed(
    store: &Store,
    cache: &Cache,
    seed: u64,
    start: u64,
    count: u64,
    progress: Progress<'_>,
) -> Result<u64, AppError> {
    let generator = Generator::new(seed);
    let mut stored = 0;
    let result = async {
        for index in start..start + count {
            let body = serde_json::to_vec(&generator.report(index))
                .map_err(|e| AppError::Internal(e.to_string()))?;
            let scan = trivy::parse_report(&body)?;
            store.insert_scan(&scan).await?;
            stored += 1;
            progress(stored, count);
        }
        Ok(())
    }
    .await;
    // Also after a failure part-way: what was stored must not be hidden by the cache.
    clear_after_bulk(cache, stored).await;
    result.map(|()| stored)
}

/// Stores each file; stops at the first that fails, naming it.
pub async fn import(
    store: &Store,
    cache: &Cache,
    files: &[impl AsRef<Path>],
    progress: Progress<'_>,
) -> Result<u64, AppError> {
    let mut stored = 0;
    let result = async {
        for file in files {
            let file = file.as_ref();
            let body = std::fs::read(file)
                .map_err(|e| AppError::BadRequest(format!("{}: {e}", file.display())))?;
            let scan = trivy::parse_report(&body).map_err(|e| {
                AppError::Unprocessable(format!("{}: {}", file.display(), AppError::from(e)))
            })?;
            store.insert_scan(&scan).await?;
            stored += 1;
            progress(stored, files.len() as u64);
        }
        Ok(())
    }
    .await;
    clear_after_bulk(cache, stored).await;
    result.map(|()| stored)
}

async fn clear_after_bulk(cache: &Cache, written: u64) {
    if written == 0 || cache.mode() == Mode::Disabled {
        return;
    }
    match cache.clear().await {
        Ok(removed) => tracing::info!(
            written,
            removed,
            "cache namespace cleared after a bulk write"
        ),
        Err(e) => tracing::warn!(written, error = %e, "cache clear deferred until redis answers"),
    }
}

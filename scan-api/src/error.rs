//! [`AppError`]: every way a request can fail, and the HTTP answer for each.
//!
//! 4xx answers carry a message that names the problem. 5xx answers are opaque to the client
//! (`{"error":"internal error"}`) and their cause is logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;
use crate::trivy::ReportError;

/// A request that could not be answered normally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// 400: malformed input (bad query parameter, body that is not JSON).
    #[error("{0}")]
    BadRequest(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 413.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// 422: well-formed JSON that is not an acceptable Trivy report.
    #[error("{0}")]
    Unprocessable(String),
    /// 500: the database failed. Logged, never shown.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: anything else that should not happen. Logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// The status this error answers with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl AppError {
    /// Logs the cause of a 5xx, once per failure.
    pub fn log(&self) {
        tracing::error!(error = %self, "request failed");
    }
}

impl From<ReportError> for AppError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::NotJson(_) => Self::BadRequest(e.to_string()),
            ReportError::Invalid { .. } => Self::Unprocessable(e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status_code().is_server_error() {
            self.log();
        }
        (&self).into_response()
    }
}

/// Lets handlers answer with the shared `Arc<AppError>` that coalesced loads hand to every
/// waiter. It does not log: the load that failed logged its error once (see
/// [`AppError::log`]).
impl IntoResponse for &AppError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let message = if status.is_server_error() {
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

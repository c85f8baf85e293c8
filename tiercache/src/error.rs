//! The library's error type.
//!
//! Errors are grouped by cause so that a caller can decide, per call site, whether to fail open
//! (treat the cache as absent) or fail closed. The operations that must never fail their caller
//! (`get`, `get_with`, `insert`, `invalidate`) never return these for Redis trouble: they log it,
//! count it and behave as a miss. A miss is never an error.

use std::time::Duration;

/// What went wrong in a cache operation or at build time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is invalid. `setting` names it as the builder method does.
    #[error("invalid cache configuration `{setting}`: {reason}")]
    Config {
        /// The builder setting (or environment variable) at fault.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis answered with an error, or the connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the per-operation timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open: Redis failed repeatedly and is not being called until a
    /// background probe sees it answer again.
    #[error("redis is unavailable (circuit breaker open)")]
    Unavailable,
    /// The operation reads Redis, and this cache keeps its values in process
    /// ([`Mode::Standalone`](crate::Mode::Standalone)).
    #[error("`{operation}` needs Redis, and this cache is {mode}")]
    NoRedis {
        /// The cache method.
        operation: &'static str,
        /// The cache's mode.
        mode: &'static str,
    },
    /// A value could not be serialized.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// Bytes read from Redis could not be turned back into a value (old format, corruption, or a
    /// different type stored under the key).
    #[error("cannot decode value: {0}")]
    Decode(String),
}

impl Error {
    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            setting,
            reason: reason.into(),
        }
    }

    /// True for invalid configuration.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config { .. })
    }

    /// True when Redis did not answer in time (our per-operation timeout or the driver's).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Redis(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// True when the call was not attempted because the circuit breaker is open.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable)
    }

    /// True when the connection to Redis failed: refused, dropped, or another I/O error.
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
            }
            _ => false,
        }
    }

    /// True when Redis refused the cache's login: a wrong password, or an ACL user that is
    /// switched off or missing. Usually fixed on the Redis side (a rotation completed, the user
    /// switched on again); the cache keeps trying and serves again once the login works.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Redis(e) if e.kind() == redis::ErrorKind::AuthenticationFailed)
    }

    /// True when Redis is unreachable for any reason: a timeout, a connection failure, a
    /// refused login or an open circuit. These are the errors that mean "serve from the source
    /// instead".
    pub fn is_unreachable(&self) -> bool {
        self.is_timeout() || self.is_connection() || self.is_auth() || self.is_unavailable()
    }

    /// True when Redis refused a write because it is at its `maxmemory` and its policy
    /// (`noeviction`) does not let it evict: the `OOM command not allowed when used memory >
    /// 'maxmemory'` reply. Redis still answers and serves reads; the cache counts this as a
    /// failed write, never as Redis being away (the breaker stays closed).
    pub fn is_oom(&self) -> bool {
        matches!(self, Self::Redis(e) if e.code() == Some("OOM"))
    }

    /// True when the operation needs Redis and the cache does not use it.
    pub fn is_no_redis(&self) -> bool {
        matches!(self, Self::NoRedis { .. })
    }

    /// True when a value could not be encoded or decoded.
    pub fn is_codec(&self) -> bool {
        matches!(self, Self::Encode(_) | Self::Decode(_))
    }
}

/// A bad key list is a configuration error of the `encryption` setting (naming the key by
/// position, never showing it).
impl From<crate::encryption::KeyError> for Error {
    fn from(e: crate::encryption::KeyError) -> Self {
        Self::config("encryption", e.to_string())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

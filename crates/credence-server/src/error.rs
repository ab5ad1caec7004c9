//! The one place where errors become HTTP statuses and the JSON error body
//! `{"error": "<code>", "message": "<human text>"}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use credence_ca::CaError;
use credence_core::CoreError;
use credence_store::StoreError;

/// Errors of the control plane. Messages are lowercase, without trailing period.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// A document (policy set, entities) with every problem listed.
    #[error("{1}")]
    Invalid(&'static str, String, Vec<String>),
    #[error("missing or invalid admin bearer token")]
    Unauthorized,
    #[error("{1}")]
    Forbidden(&'static str, String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    pub fn bad(code: &'static str, msg: impl Into<String>) -> Self {
        Self::BadRequest(code, msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(..) | Self::Invalid(..) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(..) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(code, _) | Self::Invalid(code, _, _) => code,
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(code, _) => code,
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, code = self.code(), "request refused");
        }
        // Internal details stay in the server log.
        let message = match &self {
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut body = json!({"error": self.code(), "message": message});
        if let Self::Invalid(_, _, details) = &self {
            body["details"] = json!(details);
        }
        let mut resp = (status, Json(body)).into_response();
        if matches!(self, Self::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::BadArgument(m) => Self::bad("invalid_request", m),
            StoreError::Closed => Self::Unavailable("store is shutting down".into()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<CaError> for ServerError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::InvalidCsr(_) => Self::bad("invalid_csr", e.to_string()),
            CaError::Refused(m) => Self::bad("refused", m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<CoreError> for ServerError {
    fn from(e: CoreError) -> Self {
        let code = match e {
            CoreError::InvalidSpiffeId(_) => "invalid_spiffe_id",
            CoreError::InvalidTrustDomain(_) => "invalid_trust_domain",
            CoreError::Invalid(_) => "invalid_request",
        };
        Self::bad(code, e.to_string())
    }
}

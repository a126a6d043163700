//! OpenAI-style errors: the body `{"error": {"message", "type", "param",
//! "code"}}` and `ApiError`, the body with its status (and `Retry-After`),
//! which node and gateway handlers return and clients read back.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The body every HTTP error of the node and the gateway carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(
        kind: &str,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.to_owned(),
                param: param.map(str::to_owned),
                code: code.map(str::to_owned),
            },
        }
    }
}

/// An error response: status, OpenAI-shaped body and, for overload, how
/// long to wait. The constructors give each status its OpenAI `type`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &str,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            body: ErrorBody::new(kind, message, param, code),
            retry_after: None,
        }
    }

    /// 400: a parameter's value is wrong; `param` names it.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message, Some(param), "invalid_value")
    }

    /// 400 with a specific code.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>, code: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
            param,
            Some(code),
        )
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>, code: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            message,
            None,
            Some(code),
        )
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>, param: Option<&str>, code: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            message,
            param,
            Some(code),
        )
    }

    /// 404 for a model nobody serves.
    pub fn model_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{id}` does not exist or is not loaded"),
            Some("model"),
            Some("model_not_found"),
        )
    }

    /// 404 for a route.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "no such route",
            None,
            Some("not_found"),
        )
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "this route does not take that method",
            None,
            Some("method_not_allowed"),
        )
    }

    /// 409.
    pub fn conflict(message: impl Into<String>, param: Option<&str>, code: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            message,
            param,
            Some(code),
        )
    }

    /// 429 with `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, code: &str, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            message,
            None,
            Some(code),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 500.
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            message,
            None,
            None,
        )
    }

    /// 502: the upstream answered with something that is not a response.
    pub fn bad_gateway(message: impl Into<String>, code: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            message,
            None,
            Some(code),
        )
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, code: &str, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            message,
            None,
            Some(code),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 504: no upstream answered in time.
    pub fn gateway_timeout(message: impl Into<String>, code: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            message,
            None,
            Some(code),
        )
    }

    /// 507: the node has no memory for what was asked.
    pub fn insufficient_storage(message: impl Into<String>, code: &str) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "server_error",
            message,
            None,
            Some(code),
        )
    }

    pub fn message(&self) -> &str {
        &self.body.error.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.body.error.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_openai_shape() {
        let b = ErrorBody::new(
            "invalid_request_error",
            "bad temperature",
            Some("temperature"),
            None,
        );
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "temperature");
        assert!(v["error"]["code"].is_null());
        let back: ErrorBody = serde_json::from_value(v).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn constructors_pair_status_and_type() {
        let cases = [
            (
                ApiError::invalid_param("n", "x"),
                400,
                "invalid_request_error",
            ),
            (
                ApiError::unauthorized("x", "c"),
                401,
                "authentication_error",
            ),
            (ApiError::forbidden("x", None, "c"), 403, "permission_error"),
            (ApiError::model_not_found("m"), 404, "invalid_request_error"),
            (
                ApiError::too_many_requests("x", "c", 1),
                429,
                "rate_limit_error",
            ),
            (ApiError::server("x"), 500, "server_error"),
            (ApiError::bad_gateway("x", "c"), 502, "server_error"),
            (ApiError::unavailable("x", "c", 2), 503, "unavailable_error"),
            (ApiError::gateway_timeout("x", "c"), 504, "timeout_error"),
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.status.as_u16(), status);
            assert_eq!(e.body.error.kind, kind);
            let r = e.clone().into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers().get("retry-after").is_some(),
                e.retry_after.is_some()
            );
        }
    }
}

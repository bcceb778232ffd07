//! The one place HTTP errors are rendered: every failure, whether a handler's [`ApiError`] or a
//! warp rejection (unknown route, wrong method, body too large), becomes
//! `{"error": "..."}` with its status here.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::store::StoreError;

/// A failed request: the status and a message that says what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// A body with more than `{"error"}` (it has an `error` field too), when the client needs
    /// more to act on, e.g. a write's seq and that it is committed.
    pub body: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            body: None,
        }
    }

    /// An error whose JSON body is `body` (which must have an `error` field).
    pub fn json(status: StatusCode, body: &impl serde::Serialize) -> ApiError {
        let body = serde_json::to_value(body).expect("error bodies serialize");
        ApiError {
            status,
            message: body["error"].as_str().unwrap_or_default().to_owned(),
            body: Some(body),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unknown_namespace(ns: &str, known: &[String]) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown namespace {ns:?}; this node serves: {}",
                known.join(", ")
            ),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match e {
            StoreError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::EmptyWrite => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        match self.body {
            Some(body) => {
                warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
            }
            None => render(self.status, &self.message),
        }
    }
}

fn render(status: StatusCode, message: &str) -> Response {
    let body = warp::reply::json(&serde_json::json!({ "error": message }));
    warp::reply::with_status(body, status).into_response()
}

/// Turns warp's own rejections into the same JSON shape.
pub async fn recover(err: Rejection) -> Result<Response, Infallible> {
    let (status, message) = if err.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "no such route; see the README for the API (routes live under /api/v1/{namespace}/)"
                .to_string(),
        )
    } else if let Some(e) = err.find::<warp::reject::MethodNotAllowed>() {
        (StatusCode::METHOD_NOT_ALLOWED, e.to_string())
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = err.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        tracing::warn!(rejection = ?err, "unhandled rejection");
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:?}"))
    };
    Ok(render(status, &message))
}

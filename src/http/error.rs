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

    /// 404 for a namespace this node does not serve. The namespaces it does serve are not
    /// listed: a client without credentials learns nothing about them.
    pub fn unknown_namespace(ns: &str, _known: &[String]) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown namespace {}: this node does not serve it",
                quote(ns)
            ),
        )
    }
}

/// Longest quote of client input in an error message, in bytes.
pub const MAX_QUOTE_BYTES: usize = 128;

/// Longest error message, in bytes: whatever a handler quotes, an error stays small.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `input` in double quotes as `{:?}` prints it, cut to [`MAX_QUOTE_BYTES`] with a note of
/// its full length: error messages never echo an unbounded input back.
pub fn quote(input: &str) -> String {
    if input.len() <= MAX_QUOTE_BYTES {
        return format!("{input:?}");
    }
    let cut = input.floor_char_boundary(MAX_QUOTE_BYTES);
    format!("{:?}... ({} bytes)", &input[..cut], input.len())
}

/// `message` cut to [`MAX_MESSAGE_BYTES`].
fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.into();
    }
    let cut = message.floor_char_boundary(MAX_MESSAGE_BYTES);
    format!(
        "{}... (message cut at {MAX_MESSAGE_BYTES} bytes)",
        &message[..cut]
    )
    .into()
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match e {
            StoreError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::EmptyWrite => StatusCode::BAD_REQUEST,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        match self.body {
            Some(mut body) => {
                if let Some(e) = body["error"]
                    .as_str()
                    .filter(|e| e.len() > MAX_MESSAGE_BYTES)
                {
                    body["error"] = bounded(e).into_owned().into();
                }
                warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
            }
            None => render(self.status, &self.message),
        }
    }
}

fn render(status: StatusCode, message: &str) -> Response {
    let body = warp::reply::json(&serde_json::json!({ "error": bounded(message) }));
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
    } else if let Some(denied) = err.find::<super::auth::Denied>() {
        let mut response = render(denied.status, &denied.message);
        if denied.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        return Ok(response);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_messages_are_bounded() {
        assert_eq!(quote("ns"), "\"ns\"");
        let long = "é".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < MAX_QUOTE_BYTES + 40, "{q}");
        assert!(q.ends_with("(20000 bytes)"));
        let m = bounded(&long);
        assert!(m.len() < MAX_MESSAGE_BYTES + 60);
    }
}

//! Readiness and promotion: `GET /ready` and `POST /api/v1/{ns}/promote`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::Api;
use super::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;
use crate::replication::follower::State;

/// `GET /ready` and `POST /api/v1/{ns}/promote`.
pub fn routes(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    let with_api = |api: Arc<Api>| warp::any().map(move || api.clone());
    let with = with_api(api.clone());
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with.clone())
        .map(ready)
        .boxed();
    let promote = warp::path!("api" / "v1" / String / "promote")
        .and(warp::post())
        .and(with.clone())
        .then(|ns, api| async move { super::handlers::respond(promote(api, ns).await) })
        .boxed();
    let fence = warp::path!("api" / "v1" / String / "fence")
        .and(warp::post())
        .and(with_api(api))
        .then(|ns, api| async move { super::handlers::respond(fence(api, ns).await) })
        .boxed();
    ready.or(promote).unify().or(fence).unify().boxed()
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Each namespace: "ready", or why not.
    namespaces: BTreeMap<String, String>,
}

/// Why a namespace is not ready to serve, if it is not (`/ready`, `/stats`, `/metrics`).
pub(crate) fn not_ready(api: &Api, ns: &crate::store::Namespace) -> Option<String> {
    if let Some(reason) = ns.corrupt() {
        return Some(format!("corrupt: {reason}"));
    }
    if ns.fenced() {
        return Some("fenced: refuses writes (superseded)".to_owned());
    }
    api.role.upstream(ns.name())?;
    let followed = api.followers.get(ns.name())?;
    let s = followed.tracker.snapshot(ns);
    let error = || s.last_error.clone().unwrap_or_default();
    match s.state {
        State::Following => match s.lag {
            Some(lag) if lag <= followed.max_lag => None,
            lag => Some(format!(
                "catching up: {} entries behind {} (max_lag {})",
                lag.unwrap_or_default(),
                s.upstream,
                followed.max_lag
            )),
        },
        State::Connecting => Some(format!("connecting to {}", s.upstream)),
        State::Retrying => Some(format!("retrying {}: {}", s.upstream, error())),
        State::Bootstrapping => Some(format!("bootstrapping from a snapshot of {}", s.upstream)),
        State::Stopped => Some(format!("stopped: {}", error())),
    }
}

/// 200 when every namespace serves (and, on a replica, follows within `max_lag`); else 503
/// naming each namespace that is not ready and why.
fn ready(api: Arc<Api>) -> Response {
    let mut namespaces = BTreeMap::new();
    let mut waiting = Vec::new();
    for ns in api.store.iter() {
        let state = match not_ready(&api, ns) {
            Some(why) => {
                waiting.push(format!("{}: {why}", ns.name()));
                why
            }
            None => "ready".to_owned(),
        };
        namespaces.insert(ns.name().to_owned(), state);
    }
    let (status, body) = if waiting.is_empty() {
        (
            StatusCode::OK,
            Readiness {
                status: "ready",
                error: None,
                namespaces,
            },
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Readiness {
                status: "not ready",
                error: Some(format!("not ready: {}", waiting.join("; "))),
                namespaces,
            },
        )
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

#[derive(Serialize)]
struct Promoted {
    success: bool,
    namespace: String,
    log_id: String,
    prev_log_id: String,
    fork_seq: i64,
}

/// Turns a followed namespace into a primary one: its follower stops, its log takes a new
/// log_id forked at the head (the old id and the head recorded as lineage), and it takes
/// writes at once.
async fn promote(api: Arc<Api>, ns: String) -> Result<Response> {
    let namespace = super::handlers::namespace(&api, &ns)?;
    let (Some(followed), Some(from)) = (api.followers.get(&ns), api.role.upstream(&ns)) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("namespace {ns:?} is already a primary on this node: nothing to promote"),
        ));
    };
    // The follower stops before the log forks: nothing from the old upstream lands after it.
    followed.stop.cancel();
    followed.tracker.wait_stopped().await;
    let lineage = namespace.promote(&from).await?;
    if let super::Role::Replica { upstreams } = &api.role {
        upstreams.write().unwrap().remove(&ns);
    }
    let log_id = crate::log::LogId::wire(namespace.log_id().as_ref());
    let (prev_log_id, fork_seq) = lineage.map_or((String::new(), 0), |l| {
        (l.prev_log_id.to_string(), l.fork_seq)
    });
    tracing::warn!(namespace = %ns, %log_id, %prev_log_id, fork_seq, "PROMOTED to primary: this node no longer follows an upstream for this namespace and takes writes; point other replicas here");
    Ok(warp::reply::json(&Promoted {
        success: true,
        namespace: ns,
        log_id,
        prev_log_id,
        fork_seq,
    })
    .into_response())
}

#[derive(Serialize)]
struct Fenced {
    success: bool,
    namespace: String,
}

/// Makes a namespace refuse writes from now on (persisted): what an operator does to a primary
/// that was superseded by a promotion, until it rejoins as a replica.
async fn fence(api: Arc<Api>, ns: String) -> Result<Response> {
    let namespace = super::handlers::namespace(&api, &ns)?;
    namespace.fence().await?;
    Ok(warp::reply::json(&Fenced {
        success: true,
        namespace: ns,
    })
    .into_response())
}

//! What standard gRPC tools need, served beside the replication service on the
//! `[grpc_config]` port: server reflection (so `grpcurl` can list, describe and call ferry's
//! service without the .proto) and the standard health service, `grpc.health.v1.Health`.
//!
//! Health is reported under these service names:
//! - `""` (the node): SERVING while it runs, NOT_SERVING once it is shutting down.
//! - `ferry.v1.Replication`: SERVING when every namespace is ready, as `GET /ready` answers 200.
//! - `ferry.v1.Replication/<namespace>`: SERVING when that namespace is ready, NOT_SERVING when
//!   it is not (corrupt, fenced, or on a replica not following within `max_lag`), as in
//!   `GET /ready`; the reason is in `/ready` and `/stats`. An unknown name is NOT_FOUND.
//!
//! Readiness is re-evaluated every [`HEALTH_EVERY`]; a `Watch` stream hears of a change then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::http::Api;

/// The encoded descriptors of `proto/ferry/v1/*.proto`, written by `build.rs`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));

/// The health service name of ferry's replication service.
pub const SERVICE: &str = "ferry.v1.Replication";

/// How often the health service re-evaluates readiness.
pub const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// The reflection services, v1 and v1alpha (grpcurl and older clients ask for the latter),
/// describing ferry's replication service and the health service.
pub fn reflection() -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The descriptor sets are compiled in: they cannot fail to decode.
    let v1 = builder()
        .build_v1()
        .expect("compiled-in descriptors decode");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("compiled-in descriptors decode");
    (v1, v1alpha)
}

/// The health service, with every status set before it serves, and a task (on `tasks`) that
/// keeps the statuses current until `stop`.
pub async fn health(
    api: Arc<Api>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    let mut reported = BTreeMap::new();
    report(&api, &reporter, &mut reported).await;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_EVERY) => {}
                _ = stop.cancelled() => break,
            }
            report(&api, &reporter, &mut reported).await;
        }
        for name in reported.keys().chain([&String::new()]) {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    });
    service
}

/// Sets each status that changed since the last call (a set wakes every watcher).
async fn report(
    api: &Api,
    reporter: &HealthReporter,
    reported: &mut BTreeMap<String, ServingStatus>,
) {
    let status = |ready: bool| {
        if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut now = BTreeMap::new();
    for ns in api.store.iter() {
        let ready = crate::http::failover::not_ready(api, ns).is_none();
        now.insert(format!("{SERVICE}/{}", ns.name()), status(ready));
    }
    let all = now.values().all(|s| *s == ServingStatus::Serving);
    now.insert(SERVICE.to_owned(), status(all));
    for (name, s) in now {
        if reported.get(&name) != Some(&s) {
            reporter.set_service_status(&name, s).await;
            reported.insert(name, s);
        }
    }
}

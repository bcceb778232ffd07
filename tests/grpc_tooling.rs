//! The standard gRPC tools against a node's `[grpc_config]` port: server reflection lists and
//! describes ferry's service (what `grpcurl list` / `describe` ask), and the standard health
//! service reports each namespace's readiness.

mod common;

use std::time::Duration;

use common::*;
use prost::Message;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn channel(node: &TestNode) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One reflection request, its one answer.
async fn reflect(node: &TestNode, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(node).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_replication_service() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary_with_grpc(dir.path(), &["ns"], 0).await;

    let MessageResponse::ListServicesResponse(list) =
        reflect(&node, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list of services");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ferry.v1.Replication",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );

    // `grpcurl describe ferry.v1.Replication`: the file that declares it, with its methods.
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &node,
        MessageRequest::FileContainingSymbol("ferry.v1.Replication".into()),
    )
    .await
    else {
        panic!("not a file descriptor");
    };
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .find(|f| f.package() == "ferry.v1")
        .expect("the file of package ferry.v1");
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "Replication")
        .unwrap();
    let methods: Vec<(&str, bool)> = service
        .method
        .iter()
        .map(|m| (m.name(), m.server_streaming()))
        .collect();
    assert_eq!(
        methods,
        [
            ("Position", false),
            ("Tail", true),
            ("Snapshot", true),
            ("Ack", false)
        ]
    );
    node.stop().await;
}

async fn health(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"))
}

async fn wait_health(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
) {
    wait_for(
        Duration::from_secs(20),
        &format!("{service} to be {want:?}"),
        async || (health(client, service).await == want as i32).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary_with_grpc(dir.path(), &["a", "b"], 0).await;
    let mut client = HealthClient::new(channel(&node).await);
    for service in [
        "",
        "ferry.v1.Replication",
        "ferry.v1.Replication/a",
        "ferry.v1.Replication/b",
    ] {
        assert_eq!(
            health(&mut client, service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = client
        .check(HealthCheckRequest {
            service: "ferry.v1.Replication/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // A fenced namespace refuses writes: not serving, and so not the node's service as a
    // whole; the other namespace still serves.
    let c = reqwest::Client::new();
    let (s, j) = call(
        &c,
        reqwest::Method::POST,
        &node.url("/api/v1/a/fence"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{j}");
    wait_health(
        &mut client,
        "ferry.v1.Replication/a",
        ServingStatus::NotServing,
    )
    .await;
    assert_eq!(
        health(&mut client, "ferry.v1.Replication").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        health(&mut client, "ferry.v1.Replication/b").await,
        ServingStatus::Serving as i32
    );
    assert_eq!(health(&mut client, "").await, ServingStatus::Serving as i32);
    node.stop().await;
}

/// On a replica, a namespace serves once its follower follows: not while its upstream is
/// unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_namespace_serves_once_it_follows() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Nothing listens on the upstream port until the primary starts there (a port below the
    // ephemeral range, which no outgoing connection takes meanwhile: see `fixed_ports`).
    let port = fixed_ports(1)[0];
    let replica = TestNode::replica(
        rdir.path(),
        &["ns"],
        &format!("127.0.0.1:{port}"),
        "[grpc_config]\nport = 0\n",
    )
    .await;
    let mut client = HealthClient::new(channel(&replica).await);
    assert_eq!(
        health(&mut client, "ferry.v1.Replication/ns").await,
        ServingStatus::NotServing as i32
    );
    let primary = TestNode::primary_with_grpc(pdir.path(), &["ns"], port).await;
    wait_health(
        &mut client,
        "ferry.v1.Replication/ns",
        ServingStatus::Serving,
    )
    .await;
    replica.stop().await;
    primary.stop().await;
}

//! `ferry demo`: the walkthrough's cluster — dc1, dc2 and the replica — in one process.

use crate::config::Config;
use crate::node::{Listeners, Mode, Node, NodeError};

/// Starts the three nodes, prints where they listen, runs until `shutdown`, then stops the
/// replica and the primaries in that order.
pub async fn run(
    [dc1, dc2, relayer]: [Config; 3],
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let mut nodes = Vec::new();
    for (config, mode) in [
        (dc1, Mode::Primary),
        (dc2, Mode::Primary),
        (relayer, Mode::Replica),
    ] {
        let started = match Listeners::bind(&config).await {
            Ok(listeners) => Node::start(config, mode, listeners).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(node) => nodes.push(node),
            Err(e) => {
                // Close what already runs (its files, its ports) before reporting.
                while let Some(node) = nodes.pop() {
                    node.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    println!("{}", guide(&nodes[0], &nodes[1], &nodes[2]));

    shutdown.await;
    tracing::info!("shutdown requested; stopping the replica, then the primaries");
    while let Some(node) = nodes.pop() {
        node.shutdown().await;
    }
    Ok(())
}

/// What runs where, and what to try next — with the addresses actually bound.
fn guide(dc1: &Node, dc2: &Node, replica: &Node) -> String {
    let local = |a: std::net::SocketAddr| format!("localhost:{}", a.port());
    let grpc = |n: &Node| n.grpc_addr().map(local).unwrap_or_default();
    let zmq = |ns: &str| {
        replica
            .notifier_endpoint(ns)
            .map(|e| e.replace("0.0.0.0", "localhost"))
            .unwrap_or_default()
    };
    let (h1, h2, h3) = (
        local(dc1.http_addr()),
        local(dc2.http_addr()),
        local(replica.http_addr()),
    );
    let (z1, z2) = (zmq("ad-campaign-dc1"), zmq("ad-campaign-dc2"));
    format!(
        r#"
ferry demo: the walkthrough's three nodes are running in this process (Ctrl-C stops them).

  dc1      primary  HTTP http://{h1}  gRPC {g1}  namespace ad-campaign-dc1
  dc2      primary  HTTP http://{h2}  gRPC {g2}  namespace ad-campaign-dc2
  replica  read-only HTTP http://{h3}, follows dc1 and dc2,
           ZeroMQ {z1} (ad-campaign-dc1.kv), {z2} (ad-campaign-dc2.kv)

Next, in another terminal:

  cargo run --release -- crdt-client          # the walkthrough's CRDT client

and in a third, write to dc1 and dc2 (docs/walkthrough.md has every scenario):

  curl -X PUT "http://{h1}/api/v1/ad-campaign-dc1/kv/lww:user-status" \
    -H "Content-Type: application/json" \
    -d '{{"value": "'"$(echo -n '{{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}}' | base64 | tr -d '\n')"'"}}'
  curl "http://{h3}/api/v1/ad-campaign-dc1/kv/lww:user-status"
"#,
        g1 = grpc(dc1),
        g2 = grpc(dc2),
    )
}

//! The operator commands: look at the cluster and change its membership.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use troupe_membership::rpc::RpcError;
use troupe_membership::{AdmitRequest, ClusterClient, ClusterView, NodeId};

/// Lists the nodes with their states, Raft roles and the epoch.
pub async fn nodes(client: &ClusterClient, as_json: bool) -> anyhow::Result<()> {
    let view = client.view().await.map_err(explain)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    print_view(&view);
    Ok(())
}

fn print_view(view: &ClusterView) {
    println!(
        "epoch {} · leader {} · {} nodes",
        view.epoch(),
        view.leader.map_or("none".to_string(), |l| l.to_string()),
        view.state.nodes.len()
    );
    println!("{:<6} {:<9} {:<8} {:<28} RPC", "ID", "STATE", "ROLE", "URL");
    for node in view.state.nodes.values() {
        println!(
            "{:<6} {:<9} {:<8} {:<28} {}",
            node.id,
            node.state.to_string(),
            view.role(node.id),
            node.url,
            node.rpc_addr
        );
    }
}

/// Leader, epoch, and what each node says about itself (rooms, the epoch it serves at).
pub async fn status(client: &ClusterClient, as_json: bool) -> anyhow::Result<()> {
    let view = client.view().await.map_err(explain)?;
    let mut nodes = Vec::new();
    for node in view.state.nodes.values() {
        let info = client.node_info(&node.rpc_addr).await;
        nodes.push(match info {
            Ok(info) => json!({
                "id": node.id, "state": node.state, "role": view.role(node.id), "url": node.url,
                "reachable": true, "rooms": info.rooms, "epoch": info.epoch,
            }),
            Err(error) => json!({
                "id": node.id, "state": node.state, "role": view.role(node.id), "url": node.url,
                "reachable": false, "error": error.to_string(),
            }),
        });
    }
    let rollback = view.state.config.get(troupe_membership::state::AUTO_ROLLBACK);
    let editing = view.state.flags.enable_realtime_editing;
    if as_json {
        let out = json!({
            "leader": view.leader, "epoch": view.epoch(), "version": view.version, "nodes": nodes,
            "flags": view.state.flags, "auto_rollback": rollback,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "leader {} · epoch {} · version {}",
        view.leader.map_or("none".to_string(), |l| l.to_string()),
        view.epoch(),
        view.version
    );
    if let (Some(why), false) = (rollback, editing) {
        println!("ROLLED BACK: realtime editing is off · {why}");
        println!("  (troupectl flags set enableRealtimeEditing=true turns it on again)");
    }
    println!(
        "{:<6} {:<9} {:<8} {:>6} {:>6}  URL",
        "ID", "STATE", "ROLE", "ROOMS", "EPOCH"
    );
    for n in &nodes {
        let field = |k: &str| {
            n.get(k)
                .map(|v| v.to_string().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        if n["reachable"] == json!(true) {
            println!(
                "{:<6} {:<9} {:<8} {:>6} {:>6}  {}",
                field("id"),
                field("state"),
                field("role"),
                field("rooms"),
                field("epoch"),
                field("url")
            );
        } else {
            println!(
                "{:<6} {:<9} {:<8} {:>6} {:>6}  {}  (unreachable: {})",
                field("id"),
                field("state"),
                field("role"),
                "-",
                "-",
                field("url"),
                field("error")
            );
        }
    }
    Ok(())
}

/// Adds the node listening at `addr` (its internal address): learner, then active.
pub async fn add(client: &ClusterClient, addr: &str, as_json: bool) -> anyhow::Result<()> {
    let info = client
        .node_info(addr)
        .await
        .with_context(|| format!("cannot reach the new node at {addr}"))?;
    let view = client.view().await.map_err(explain)?;
    let member = view.state.nodes.contains_key(&info.id)
        || view.voters.contains(&info.id)
        || view.learners.contains(&info.id);
    if let Some(existing) = view.state.nodes.get(&info.id) {
        if existing.rpc_addr != info.rpc_addr {
            bail!(
                "node id {} is already used by the node at {}; give the new node another TROUPE_NODE_ID",
                info.id,
                existing.rpc_addr
            );
        }
    }
    if info.initialized && !member {
        bail!(
            "node {} at {addr} already belongs to another cluster (it formed one of its own); \
             start it on an empty data folder with TROUPE_PEERS naming this cluster's voters",
            info.id
        );
    }
    let request = AdmitRequest {
        id: info.id,
        url: info.url.clone(),
        rpc_addr: info.rpc_addr.clone(),
    };
    let view = client.admit(&request).await.map_err(explain)?;
    report(&view, info.id, "added", as_json)
}

pub async fn drain(client: &ClusterClient, id: NodeId, as_json: bool) -> anyhow::Result<()> {
    let view = client.drain(id).await.map_err(explain)?;
    report(&view, id, "draining: its scenes move to the other nodes", as_json)
}

pub async fn activate(client: &ClusterClient, id: NodeId, as_json: bool) -> anyhow::Result<()> {
    let view = client.activate(id).await.map_err(explain)?;
    report(&view, id, "active", as_json)
}

pub async fn remove(client: &ClusterClient, id: NodeId, as_json: bool) -> anyhow::Result<()> {
    let view = client.remove(id).await.map_err(explain)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!("node {id} removed · epoch {}", view.epoch());
    }
    Ok(())
}

/// Revokes `user` from now on (or lifts it): their connections close on every node, and
/// tokens issued before now are refused.
pub async fn revoke(client: &ClusterClient, user: &str, lift: bool, as_json: bool) -> anyhow::Result<()> {
    let now = troupe_proto::clock::now_secs();
    let view = client
        .revoke(user, (!lift).then_some(now))
        .await
        .map_err(explain)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view.state.revoked)?);
    } else if lift {
        println!("{user:?} is no longer revoked");
    } else {
        println!(
            "{user:?} revoked: open connections close now; tokens issued before {now} (Unix time) are refused, \
             newer ones (with an iat claim) work again"
        );
    }
    Ok(())
}

/// Lists the revoked users.
pub async fn revoked(client: &ClusterClient, as_json: bool) -> anyhow::Result<()> {
    let view = client.view().await.map_err(explain)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view.state.revoked)?);
        return Ok(());
    }
    if view.state.revoked.is_empty() {
        println!("no user is revoked");
    }
    for (user, not_before) in &view.state.revoked {
        println!("{user}\ttokens issued before {not_before} refused");
    }
    Ok(())
}

/// Which node serves `scene`, as placement says at the current epoch.
pub async fn route(client: &ClusterClient, scene: &str, as_json: bool) -> anyhow::Result<()> {
    let view = client.view().await.map_err(explain)?;
    let Some(route) = view.placement().route(scene) else {
        bail!("no node is active: scene {scene:?} has no owner");
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&route)?);
    } else {
        println!(
            "{scene} -> node {} at {} (epoch {})",
            route.node, route.url, route.epoch
        );
    }
    Ok(())
}

fn report(view: &ClusterView, id: NodeId, what: &str, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(view)?);
    } else {
        let state = view
            .state
            .nodes
            .get(&id)
            .map_or("gone".to_string(), |n| n.state.to_string());
        println!("node {id} {what} · state {state} · epoch {}", view.epoch());
    }
    Ok(())
}

/// Turns an RPC failure into one line an operator can act on.
pub fn explain(error: RpcError) -> anyhow::Error {
    match error {
        RpcError::Refused { body, .. } => anyhow::anyhow!("{}", body.message),
        RpcError::Unreachable { .. } | RpcError::Timeout { .. } => anyhow::anyhow!(
            "no cluster node answers ({error}); check --cluster / TROUPE_CLUSTER (internal addresses, e.g. 127.0.0.1:4100)"
        ),
        other => anyhow::anyhow!("{other}"),
    }
}

/// How long operator commands may take at most.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

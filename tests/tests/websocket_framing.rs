//! The node's side of RFC 6455, seen by a stock WebSocket client (tungstenite's): the node
//! reads client frames itself (keeping no buffer between messages), so what the library used
//! to do for it is checked here — pings answered, fragments joined, a close answered.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use troupe_proto::message as protocol;
use troupe_proto::token::Role;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};
use yrs::{Doc, GetString, Text, Transact};

/// The next message that is not one of the node's own pings, or a failure after 5 s.
async fn next_message(client: &mut TestClient) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.socket.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            Ok(Some(Ok(message))) => return Some(message),
            Ok(Some(Err(error))) => panic!("socket error: {error}"),
            Ok(None) => return None,
            Err(_) => panic!("nothing from the node within 5 s"),
        }
    }
}

fn fragment(payload: &[u8], opcode: OpCode, is_final: bool) -> Message {
    Message::Frame(Frame::message(payload.to_vec(), opcode, is_final))
}

/// A node of its own, a new scene, an editor's token for it and a client synced on it.
async fn editor_on_a_new_node(prefix: &str) -> (NodeProcess, String, String, TestClient) {
    let node = NodeProcess::start(&Backend::Sqlite, &[]).expect("start node");
    let scene = unique(prefix);
    let tok = token("alice", &[(scene.as_str(), Role::Edit)]);
    let client = TestClient::connect(&node.ws_base(), &scene, &tok)
        .await
        .expect("connect");
    (node, scene, tok, client)
}

#[tokio::test]
async fn pings_fragments_and_closes_are_answered_as_rfc_6455_asks() {
    let (node, scene, tok, mut client) = editor_on_a_new_node("framing").await;

    // A ping comes back as a pong with the same payload.
    client
        .socket
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    loop {
        match next_message(&mut client).await {
            Some(Message::Pong(payload)) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Some(_) => continue,
            None => panic!("closed instead of answering the ping"),
        }
    }

    // An update in three fragments, a ping between two of them, is applied once whole.
    let update = {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "sent in pieces");
        txn.encode_update_v1()
    };
    let message = protocol::encode_update(&update);
    let (first, rest) = message.split_at(2);
    let (second, third) = rest.split_at(rest.len() / 2);
    for part in [
        fragment(first, OpCode::Data(Data::Binary), false),
        Message::Ping(Bytes::from_static(b"between")),
        fragment(second, OpCode::Data(Data::Continue), false),
        fragment(third, OpCode::Data(Data::Continue), true),
    ] {
        client.socket.send(part).await.expect("send a fragment");
    }
    let mut reader = TestClient::connect(&node.ws_base(), &scene, &tok)
        .await
        .expect("connect");
    reader
        .pump_until(Duration::from_secs(5), |c| c.text() == "sent in pieces")
        .await
        .expect("the fragmented update reached a new client");
    let text = reader.doc.get_or_insert_text("text");
    assert_eq!(text.get_string(&reader.doc.transact()), "sent in pieces");

    // A client's close is answered with the node's close, not a reset.
    client.socket.close(None).await.expect("close");
    loop {
        match next_message(&mut client).await {
            Some(Message::Close(_)) => break,
            Some(_) => continue,
            None => panic!("the node hung up without answering the close"),
        }
    }
}

#[tokio::test]
async fn a_flood_of_pings_is_refused_like_any_flood() {
    // Each ping costs the node a write; they count against TROUPE_MESSAGE_RATE (500/s).
    let (_node, _, _, mut client) = editor_on_a_new_node("pings").await;
    for _ in 0..2_000 {
        if client.socket.send(Message::Ping(Bytes::new())).await.is_err() {
            break;
        }
    }
    assert_eq!(client.expect_close().await.expect("closed").code, 4429);
}

//! The client against a scripted in-process server: durable acks, close codes, junk frames.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;
use troupe_chaos::client::{ClientError, ClientEvent, ClientOptions, CloseInitiator, EditorClient, Sent};
use troupe_proto::Message;

const T: Duration = Duration::from_secs(5);

/// The next binary frame from the client (decode it with [`Message::decode`]).
async fn next_frame<S>(ws: &mut S) -> Bytes
where
    S: futures_util::Stream<Item = Result<Ws, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Ws::Binary(b))) => return b,
            Some(Ok(_)) => continue,
            other => panic!("client went away: {other:?}"),
        }
    }
}

/// A handshake callback that records the request's path and query.
///
/// A trait impl rather than a closure: the error type is tungstenite's (a whole HTTP
/// response), which clippy's `result_large_err` flags on closures but not on implementations
/// of a foreign trait, whose signature is not ours to change.
struct RecordPath<'a>(&'a mut String);

impl Callback for RecordPath<'_> {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        *self.0 = req.uri().to_string();
        Ok(resp)
    }
}

#[tokio::test]
async fn acks_and_close_codes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut path = String::new();
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, RecordPath(&mut path))
            .await
            .expect("handshake");
        assert!(path.starts_with("/ws/scenes/s1?token=tok&acks=1"), "{path}");
        // The client opens with its step 1.
        assert!(matches!(
            Message::decode(&next_frame(&mut ws).await),
            Ok(Message::SyncStep1(_))
        ));
        // Ours: an empty state vector; the client answers with step 2 (update-bearing #1).
        let empty_sv: &[u8] = &[0];
        ws.send(Ws::Binary(Message::SyncStep1(empty_sv).encode().into()))
            .await
            .expect("send");
        assert!(matches!(
            Message::decode(&next_frame(&mut ws).await),
            Ok(Message::SyncStep2(_))
        ));
        let empty_update: &[u8] = &[0, 0];
        ws.send(Ws::Binary(Message::SyncStep2(empty_update).encode().into()))
            .await
            .expect("send");
        // One edit: update-bearing #2.
        assert!(matches!(
            Message::decode(&next_frame(&mut ws).await),
            Ok(Message::Update(_))
        ));
        // Junk must not kill the connection.
        ws.send(Ws::Binary(vec![42, 1, 2].into())).await.expect("send");
        ws.send(Ws::Binary(Message::Ack(2).encode().into()))
            .await
            .expect("send");
        // Then the server throws the client out.
        ws.send(Ws::Close(Some(CloseFrame {
            code: CloseCode::from(4403),
            reason: "no access to s1".into(),
        })))
        .await
        .expect("close");
        while let Some(Ok(_)) = ws.next().await {}
    });

    let opts = ClientOptions {
        acks: true,
        events: true,
        ..ClientOptions::default()
    };
    let mut c = EditorClient::connect(&format!("ws://{addr}/ws/scenes"), "s1", "tok", opts)
        .await
        .expect("connect");
    let mut events = c.take_events().expect("events");
    c.wait_synced(T).await.expect("synced");
    let sent = c.push("text", "x").await.expect("push");
    assert_eq!(sent, Sent::Message { connection: 1, n: 2 });
    assert_eq!(c.wait_acked(T).await.expect("acked"), 2);
    let info = c.closed(T).await.expect("closed");
    assert_eq!(info.code, Some(4403));
    assert_eq!(info.reason, "no access to s1");
    assert_eq!(info.initiator, CloseInitiator::Server);
    let st = c.status();
    assert_eq!((st.sent_updates, st.acked, st.protocol_errors), (2, 2, 1));
    // What was acked stays acked after the close.
    assert!(matches!(c.wait_acked(T).await, Ok(2)));
    server.await.expect("server");

    let mut kinds = Vec::new();
    while let Ok(ev) = events.try_recv() {
        kinds.push(match ev {
            ClientEvent::Connected { .. } => "connected",
            ClientEvent::Synced { .. } => "synced",
            ClientEvent::Update(_) => "update",
            ClientEvent::Ack { .. } => "ack",
            ClientEvent::ProtocolError { .. } => "protocol_error",
            ClientEvent::Closed(_) => "closed",
            ClientEvent::Awareness { .. } | ClientEvent::AuthDenied { .. } => "other",
        });
    }
    assert_eq!(
        kinds,
        ["connected", "synced", "update", "protocol_error", "ack", "closed"]
    );
}

#[tokio::test]
async fn closed_before_sync_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("handshake");
        let _ = ws
            .send(Ws::Close(Some(CloseFrame {
                code: CloseCode::from(4401),
                reason: "token expired".into(),
            })))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    let c = EditorClient::connect(&format!("ws://{addr}"), "s", "bad", ClientOptions::default())
        .await
        .expect("connect");
    match c.wait_synced(T).await {
        Err(ClientError::Closed(info)) => assert_eq!(info.code, Some(4401)),
        other => panic!("expected a 4401 close, got {other:?}"),
    }
}

/// The full state of a document holding `text`, and an update appending `more` to it.
fn scene_updates(text: &str, more: &str) -> (Vec<u8>, Vec<u8>) {
    use yrs::{GetString, ReadTxn, StateVector, Text, Transact};
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("text");
    t.push(&mut doc.transact_mut(), text);
    let state = doc.transact().encode_state_as_update_v1(&StateVector::default());
    let before = doc.transact().state_vector();
    t.push(&mut doc.transact_mut(), more);
    assert_eq!(t.get_string(&doc.transact()), format!("{text}{more}"));
    let more = doc.transact().encode_state_as_update_v1(&before);
    (state, more)
}

/// Clients sharing a first sync: the first integrates the scene, the next ones with the same
/// answer defer it (no inserted strings in their sync event) and still end with the whole
/// text once an update arrives; a client answered differently integrates its own answer.
#[tokio::test]
async fn clients_of_one_scene_share_the_first_sync_and_still_hold_the_text() {
    use troupe_chaos::client::{SharedFirstSync, UpdateKind};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (kitchen, night) = scene_updates("INT. KITCHEN", " - NIGHT");
    let (garden, day) = scene_updates("EXT. GARDEN", " - DAY");
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.expect("accept");
            let kitchen = (kitchen.clone(), night.clone());
            let garden = (garden.clone(), day.clone());
            tokio::spawn(async move {
                let mut path = String::new();
                let mut ws = tokio_tungstenite::accept_hdr_async(tcp, RecordPath(&mut path))
                    .await
                    .expect("handshake");
                let (first, then) = if path.contains("/garden") {
                    &garden
                } else {
                    &kitchen
                };
                assert!(matches!(
                    Message::decode(&next_frame(&mut ws).await),
                    Ok(Message::SyncStep1(_))
                ));
                for m in [Message::SyncStep2(first), Message::Update(then)] {
                    ws.send(Ws::Binary(m.encode().into())).await.expect("send");
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });

    let shared = SharedFirstSync::default();
    let join = |scene: &'static str| {
        let opts = ClientOptions {
            events: true,
            observe_text: Some("text".into()),
            shared_first_sync: Some(shared.clone()),
            ..ClientOptions::default()
        };
        async move {
            let mut c = EditorClient::connect(&format!("ws://{addr}/ws/scenes"), scene, "tok", opts)
                .await
                .expect("connect");
            let mut events = c.take_events().expect("events");
            c.wait_synced(T).await.expect("synced");
            let mut inserted = Vec::new();
            while inserted.len() < 2 {
                match tokio::time::timeout(T, events.recv()).await {
                    Ok(Some(ClientEvent::Update(u))) => inserted.push((u.kind, u.inserted.concat())),
                    Ok(Some(_)) => {}
                    other => panic!("no update event: {other:?}"),
                }
            }
            (c, inserted)
        }
    };
    let (first, seen) = join("kitchen").await;
    assert_eq!(
        seen,
        [
            (UpdateKind::SyncStep2, "INT. KITCHEN".to_owned()),
            (UpdateKind::Update, " - NIGHT".to_owned())
        ]
    );
    for _ in 0..2 {
        let (next, seen) = join("kitchen").await;
        // Deferred: nothing integrated at the sync, the whole scene there after the update.
        assert_eq!(
            seen,
            [
                (UpdateKind::SyncStep2, String::new()),
                (UpdateKind::Update, " - NIGHT".to_owned())
            ]
        );
        assert_eq!(next.text("text").await.expect("text"), "INT. KITCHEN - NIGHT");
    }
    assert_eq!(first.text("text").await.expect("text"), "INT. KITCHEN - NIGHT");
    // Another answer is not the shared one: integrated as it came.
    let (other, seen) = join("garden").await;
    assert_eq!(seen[0], (UpdateKind::SyncStep2, "EXT. GARDEN".to_owned()));
    assert_eq!(other.text("text").await.expect("text"), "EXT. GARDEN - DAY");
}

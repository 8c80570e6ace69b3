//! One simulated editor of a load run: it types markers on a schedule, records every other
//! editor's marker it sees, and follows its scene when a 4301 names a new owner (as a
//! client of a cluster must, or a membership change would look like lost editors).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Interval, MissedTickBehavior};
use yrs::{Text, WriteTxn};

use super::marker::{parse_all, Marker};
use super::target::{node_base, Target, TargetError};
use troupe_proto::CloseCode;

use crate::client::{
    scene_url, ClientError, ClientEvent, ClientOptions, CloseInfo, EditorClient, Sent, SharedFirstSync,
};

/// Close code of a node that does not (or no longer) own the scene; the reason is the
/// owner's base URL.
const MOVED: u16 = CloseCode::Moved.code();

/// Moves followed in a row before an editor gives up (a route that never settles).
const MAX_MOVES: u32 = 10;

/// When things happen in one step of a run, shared by all editors.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    /// Zero of the markers' clock.
    pub epoch: Instant,
    /// Typing starts (each editor at a random phase of its period).
    pub start: Instant,
    /// Typing stops.
    pub window_end: Instant,
    /// Listening stops.
    pub end: Instant,
    /// Time between two edits of one editor; `None` types nothing.
    pub period: Option<Duration>,
    pub acks: bool,
}

impl Plan {
    pub fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// A remote edit seen by an editor.
pub(crate) struct Receipt {
    pub sender: u32,
    pub seq: u32,
    pub sent_us: u64,
    pub recv_us: u64,
}

/// What one editor saw during one step.
#[derive(Default)]
pub(crate) struct StepResult {
    /// `(seq, send time)` of this editor's edits.
    pub sent: Vec<(u32, u64)>,
    pub receipts: Vec<Receipt>,
    /// `(send time, ack latency)` of acknowledged edits, in µs.
    pub acks: Vec<(u64, u64)>,
    pub send_failures: u64,
    pub protocol_errors: u64,
    /// 4301 closes followed to the new owner.
    pub moved: u64,
    /// Set when its connection ended for good during this step.
    pub closed: Option<CloseInfo>,
}

/// A connected editor between steps.
pub(crate) struct Typist {
    pub id: u32,
    pub scene: String,
    pub client: EditorClient,
    events: UnboundedReceiver<ClientEvent>,
    token: String,
    acks: bool,
    text: Arc<str>,
    target: Arc<Target>,
    /// Next marker's sequence number - 1.
    seq: u32,
    /// Its connection ended (not by a move): it types no more.
    gone: bool,
}

/// How an editor connects.
pub(crate) struct Connect {
    pub id: u32,
    pub scene: String,
    pub token: String,
    pub acks: bool,
    pub text: Arc<str>,
    pub target: Arc<Target>,
    pub sync_timeout: Duration,
    /// Shared by the editors of the scene (a join storm integrates one document).
    pub first_sync: SharedFirstSync,
}

#[derive(Debug, thiserror::Error)]
pub enum TypistError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("still moved after {MAX_MOVES} redirects")]
    TooManyMoves,
    #[error("no event stream")]
    NoEvents,
}

impl Typist {
    /// Connects and syncs, following 4301 closes; returns the editor and the moves followed.
    pub async fn connect(c: Connect) -> Result<(Typist, u64), TypistError> {
        let mut base = c.target.base_for(&c.scene).await?;
        let mut moves = 0;
        let mut client = loop {
            let opts = ClientOptions {
                acks: c.acks,
                events: true,
                observe_text: Some(c.text.to_string()),
                shared_first_sync: Some(c.first_sync.clone()),
                ..ClientOptions::default()
            };
            let url = scene_url(&base, &c.scene, &c.token, c.acks)?;
            let client = EditorClient::connect_url(&url, opts).await?;
            match client.wait_synced(c.sync_timeout).await {
                Ok(()) => break client,
                Err(ClientError::Closed(info)) if info.code == Some(MOVED) && moves < MAX_MOVES => {
                    moves += 1;
                    base = next_base(&c.target, &c.scene, &info.reason).await?;
                }
                Err(ClientError::Closed(info)) if info.code == Some(MOVED) => {
                    return Err(TypistError::TooManyMoves)
                }
                Err(e) => return Err(e.into()),
            }
        };
        let events = client.take_events().ok_or(TypistError::NoEvents)?;
        let typist = Typist {
            id: c.id,
            scene: c.scene,
            client,
            events,
            token: c.token,
            acks: c.acks,
            text: c.text,
            target: c.target,
            seq: 0,
            gone: false,
        };
        Ok((typist, u64::from(moves)))
    }

    /// Types and listens according to `plan`, then hands the editor back for the next step.
    pub async fn step(mut self, plan: Plan) -> (Typist, StepResult) {
        let mut res = StepResult::default();
        let mut ticker = plan.period.map(|period| {
            let phase = period.mul_f64(rand::random::<f64>());
            let mut t = tokio::time::interval_at((plan.start + phase).into(), period);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let end = tokio::time::sleep_until(plan.end.into());
        tokio::pin!(end);
        // (message number, send time) of edits awaiting their ack.
        let mut pending_acks: VecDeque<(u64, u64)> = VecDeque::new();
        let mut sending = !self.gone && ticker.is_some();
        let mut events_open = true;
        loop {
            tokio::select! {
                _ = &mut end => break,
                _ = tick(&mut ticker), if sending => {
                    if Instant::now() >= plan.window_end {
                        sending = false;
                        continue;
                    }
                    self.type_one(&plan, &mut res, &mut pending_acks).await;
                }
                ev = self.events.recv(), if events_open => match ev {
                    Some(ClientEvent::Update(u)) => {
                        let recv_us = plan.micros(u.at);
                        for s in &u.inserted {
                            for m in parse_all(s).into_iter().filter(|m| m.sender != self.id) {
                                res.receipts.push(Receipt {
                                    sender: m.sender,
                                    seq: m.seq,
                                    sent_us: m.sent_us,
                                    recv_us,
                                });
                            }
                        }
                    }
                    Some(ClientEvent::Ack { at, acked }) => {
                        let at_us = plan.micros(at);
                        while let Some(&(n, sent)) = pending_acks.front() {
                            if n > acked {
                                break;
                            }
                            res.acks.push((sent, at_us.saturating_sub(sent)));
                            pending_acks.pop_front();
                        }
                    }
                    Some(ClientEvent::ProtocolError { .. }) => res.protocol_errors += 1,
                    Some(ClientEvent::Closed(info)) if !self.gone => {
                        // Acks restart with the next connection; what was pending goes out
                        // again in its sync handshake.
                        pending_acks.clear();
                        if info.code == Some(MOVED) && self.follow(&info.reason).await.is_ok() {
                            res.moved += 1;
                        } else {
                            tracing::debug!(editor = self.id, scene = %self.scene, %info, "connection ended");
                            res.closed = Some(info);
                            self.gone = true;
                            sending = false;
                        }
                    }
                    Some(_) => {}
                    None => events_open = false,
                },
            }
        }
        (self, res)
    }

    async fn type_one(&mut self, plan: &Plan, res: &mut StepResult, pending_acks: &mut VecDeque<(u64, u64)>) {
        self.seq += 1;
        let seq = self.seq;
        let sent_us = plan.micros(Instant::now());
        let marker = Marker {
            sender: self.id,
            seq,
            sent_us,
        }
        .encode();
        let at: f64 = rand::random();
        let name = self.text.clone();
        let edit = self.client.edit(move |txn| {
            let t = txn.get_or_insert_text(name);
            let len = t.len(txn);
            t.insert(txn, (at * f64::from(len)) as u32, &marker);
        });
        match edit.await {
            Ok(((), Sent::Message { n, .. })) => {
                res.sent.push((seq, sent_us));
                if plan.acks {
                    pending_acks.push_back((n, sent_us));
                }
            }
            // Typed while the connection is down: it goes out with the next handshake.
            Ok(((), Sent::Offline)) => res.sent.push((seq, sent_us)),
            Ok(((), Sent::Nothing)) | Err(_) => res.send_failures += 1,
        }
    }

    /// Reconnects to the owner a 4301 named (or, without a name, wherever the target says),
    /// following further moves, and waits for the sync.
    async fn follow(&mut self, reason: &str) -> Result<(), TypistError> {
        let mut reason = reason.to_owned();
        for _ in 0..MAX_MOVES {
            let base = next_base(&self.target, &self.scene, &reason).await?;
            let url = scene_url(&base, &self.scene, &self.token, self.acks)?;
            self.client.reconnect_to(&url).await?;
            match self.client.wait_synced(Duration::from_secs(10)).await {
                Ok(()) => return Ok(()),
                Err(ClientError::Closed(info)) if info.code == Some(MOVED) => reason = info.reason,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TypistError::TooManyMoves)
    }

    /// Ends the connection (the run is over).
    pub async fn close(&self) {
        if let Err(e) = self.client.close(1000, "load done").await {
            tracing::debug!(editor = self.id, error = %e, "close");
        }
    }
}

/// Where a 4301 sends an editor: the owner it names, else the target's current answer.
async fn next_base(target: &Target, scene: &str, reason: &str) -> Result<String, TargetError> {
    if reason.is_empty() {
        target.base_for(scene).await
    } else {
        Ok(node_base(reason))
    }
}

/// The next tick, or never without a ticker.
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

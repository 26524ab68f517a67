//! The MQTT session task.
//!
//! The agent connects with a clean session, so after any reconnect neither the broker nor
//! rumqttc remembers anything: on every ConnAck the task puts back in line whatever was in
//! flight, subscribes to its policy topics again (rumqttc does not restore subscriptions,
//! rumqttc issue #250), and publishes its retained `Online` state. The last will (a signed,
//! retained `Offline` state) is sealed afresh before every connection attempt.
//!
//! Messages are handed to rumqttc in ascending sequence order, at most `max_inflight` at a
//! time. rumqttc reports the packet id it gave each publish (`Outgoing::Publish(pkid)`) in
//! the order they were handed over, so a FIFO maps packet ids back to queue entries, and a
//! PubAck for an alert deletes exactly that alert from disk.
//!
//! Reconnects wait an exponentially growing delay with full jitter, so a fleet that lost its
//! broker at once does not come back at once.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing as MqttOutgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use smtpguard_protocol::{topic, Body, Command, Status, Topic, MAX_MESSAGE_BYTES};
use tokio::sync::{mpsc, Notify};

use super::commands::CommandDecision;
use super::guard::{Decision, PolicyUpdate};
use super::queue::{Class, Outgoing};
use super::{now_ms, Settings, Shared, UplinkError};

pub use smtpguard_common::{Backoff, BrokerAddr};

/// Parses `broker_url` ([`BrokerAddr::parse`]).
///
/// # Errors
/// [`UplinkError::Config`] naming `broker_url`.
pub fn parse_url(url: &str) -> Result<BrokerAddr, UplinkError> {
    BrokerAddr::parse(url).map_err(|e| UplinkError::Config {
        field: "broker_url",
        problem: e.to_string(),
    })
}

/// The broker's addresses (for the policy safety check). Best effort: an unresolvable name
/// yields none.
pub async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(_) => Vec::new(),
    }
}

/// MQTT options from the settings (the last will is added by the task).
///
/// # Errors
/// [`UplinkError::Config`] for an unusable TLS CA file.
pub fn options(settings: &Settings, addr: &BrokerAddr) -> Result<MqttOptions, UplinkError> {
    let mut o = MqttOptions::new(settings.cpe_id.clone(), addr.host.clone(), addr.port);
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(settings.keep_alive_secs.max(5)))
        .set_max_packet_size(MAX_MESSAGE_BYTES + 1024, MAX_MESSAGE_BYTES + 1024)
        .set_inflight(u16::try_from(settings.max_inflight.clamp(1, 1000)).unwrap_or(32));
    let user = settings
        .username
        .clone()
        .unwrap_or_else(|| settings.cpe_id.clone());
    o.set_credentials(user, settings.password.clone().unwrap_or_default());
    if addr.tls {
        o.set_transport(Transport::Tls(tls_config(settings)?));
    }
    Ok(o)
}

fn tls_config(settings: &Settings) -> Result<TlsConfiguration, UplinkError> {
    let bad = |problem: String| UplinkError::Config {
        field: "tls_ca_file",
        problem,
    };
    let path = settings
        .tls_ca_file
        .as_ref()
        .ok_or_else(|| bad("mqtts:// needs a CA file".into()))?;
    smtpguard_common::tls_client_config(path)
        .map(TlsConfiguration::Rustls)
        .map_err(|e| bad(e.to_string()))
}

struct Session {
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    policies: mpsc::UnboundedSender<PolicyUpdate>,
    commands: mpsc::UnboundedSender<Command>,
    /// Handed to rumqttc, packet id not known yet, in hand-over order.
    handed: VecDeque<Outgoing>,
    /// Packet id → message awaiting its PubAck.
    inflight: HashMap<u16, Outgoing>,
    max_inflight: usize,
    connected: bool,
    state_topic: String,
}

impl Session {
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Shared>> {
        self.shared.lock().ok()
    }

    /// Puts everything in flight back in its queue (the session that carried it is gone).
    fn requeue_all(&mut self) {
        let mut items: Vec<Outgoing> = self.handed.drain(..).collect();
        items.extend(self.inflight.drain().map(|(_, m)| m));
        let Some(mut s) = self.shared.lock().ok() else {
            return;
        };
        for m in items {
            match m.class {
                Class::Alert => s.alerts.requeue(m.seq),
                Class::Telemetry | Class::Control => s.mem.push(m),
            }
        }
    }

    /// Hands queued messages to rumqttc, lowest sequence number first.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        while self.handed.len() + self.inflight.len() < self.max_inflight {
            let next = {
                let Some(mut s) = self.lock() else { return };
                match (s.alerts.peek(), s.mem.peek()) {
                    (Some(a), Some(m)) if a < m => s.alerts.pop(),
                    (Some(_), None) => s.alerts.pop(),
                    (_, Some(_)) => s.mem.pop(),
                    (None, None) => None,
                }
            };
            let Some(msg) = next else { return };
            match self.client.try_publish(
                msg.topic.clone(),
                QoS::AtLeastOnce,
                msg.retain,
                msg.bytes.clone(),
            ) {
                Ok(()) => self.handed.push_back(msg),
                Err(e) => {
                    tracing::debug!(error = %e, "MQTT request queue full");
                    if let Some(mut s) = self.lock() {
                        match msg.class {
                            Class::Alert => s.alerts.requeue(msg.seq),
                            _ => s.mem.push(msg),
                        }
                    }
                    return;
                }
            }
        }
    }

    fn on_connack(&mut self) {
        self.connected = true;
        self.requeue_all();
        let filters = topic::agent_filters(&self.shared_cpe_id())
            .into_iter()
            .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::warn!(error = %e, "could not subscribe to policy and command topics");
        }
        if let Some(mut s) = self.lock() {
            s.connected = true;
            let state = s.state(Status::Online);
            if let Err(e) = s.queue_control(&state) {
                tracing::warn!(error = %e, "could not queue the online state");
            }
        }
        self.pump();
    }

    fn shared_cpe_id(&self) -> String {
        self.lock().map(|s| s.cpe_id.clone()).unwrap_or_default()
    }

    fn on_outgoing_publish(&mut self, pkid: u16) {
        if pkid == 0 || self.inflight.contains_key(&pkid) {
            return;
        }
        if let Some(m) = self.handed.pop_front() {
            self.inflight.insert(pkid, m);
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        if let Some(m) = self.inflight.remove(&pkid) {
            if let Some(mut s) = self.lock() {
                s.acked += 1;
                if m.class == Class::Alert {
                    s.alerts.acked(m.seq);
                }
            }
        }
        self.pump();
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        if matches!(Topic::parse(topic), Ok(Topic::Command(_))) {
            self.on_command(topic, payload);
            return;
        }
        let decision = match self.lock() {
            Some(mut s) => s.guard.decide(topic, payload, now_ms()),
            None => return,
        };
        match decision {
            Decision::Apply(update) => {
                tracing::info!(scope = ?update.scope, version = update.version, "policy received");
                let _ = self.policies.send(update);
            }
            Decision::Refuse(ack) => {
                tracing::warn!(?ack, "policy refused");
                if let Some(mut s) = self.lock() {
                    if let Err(e) = s.queue_control(&Body::PolicyAck(ack)) {
                        tracing::warn!(error = %e, "could not queue a policy refusal");
                    }
                }
                self.pump();
            }
            Decision::Ignore => {}
        }
    }

    fn on_command(&mut self, topic: &str, payload: &[u8]) {
        let decision = match self.lock() {
            Some(mut s) => s.commands.decide(topic, payload, now_ms()),
            None => return,
        };
        match decision {
            CommandDecision::Apply(command) => {
                tracing::info!(
                    id = command.command_id,
                    action = command.action.name(),
                    mac = %command.action.mac(),
                    "command received"
                );
                let _ = self.commands.send(command);
            }
            CommandDecision::Refuse(ack) => {
                tracing::warn!(?ack, "command refused");
                if let Some(mut s) = self.lock() {
                    if let Err(e) = s.queue_control(&Body::CommandAck(ack)) {
                        tracing::warn!(error = %e, "could not queue a command refusal");
                    }
                }
                self.pump();
            }
            CommandDecision::Ignore => {}
        }
    }

    fn on_disconnect(&mut self) {
        self.connected = false;
        if let Some(mut s) = self.lock() {
            s.connected = false;
        }
    }

    /// A fresh signed `Offline` state for the broker to publish if this connection dies.
    fn will(&self) -> Option<LastWill> {
        let mut s = self.lock()?;
        let body = s.state(Status::Offline);
        match s.seal(&body) {
            Ok((_, bytes)) => Some(LastWill::new(
                self.state_topic.clone(),
                bytes,
                QoS::AtLeastOnce,
                true,
            )),
            Err(e) => {
                tracing::warn!(error = %e, "could not seal the last will");
                None
            }
        }
    }
}

/// Runs the session until `shutdown` resolves; then publishes a retained `Offline` state
/// (best effort, one second) and disconnects.
pub(crate) async fn run(
    settings: Settings,
    options: MqttOptions,
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    (policies, commands): (
        mpsc::UnboundedSender<PolicyUpdate>,
        mpsc::UnboundedSender<Command>,
    ),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let capacity = settings.max_inflight * 2 + 16;
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut session = Session {
        client,
        shared,
        policies,
        commands,
        handed: VecDeque::new(),
        inflight: HashMap::new(),
        max_inflight: settings.max_inflight.max(1),
        connected: false,
        state_topic: Topic::State(settings.cpe_id.clone()).to_string(),
    };
    set_will(&mut eventloop, &session);
    let mut backoff = Backoff::new(settings.reconnect_min_ms, settings.reconnect_max_ms);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = wake.notified() => session.pump(),
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    tracing::info!("uplink connected");
                    session.on_connack();
                }
                Ok(Event::Outgoing(MqttOutgoing::Publish(pkid))) => session.on_outgoing_publish(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => session.on_puback(ack.pkid),
                Ok(Event::Incoming(Packet::Publish(p))) => session.on_publish(&p.topic, &p.payload),
                Ok(_) => {}
                Err(e) => {
                    if session.connected {
                        tracing::warn!(error = %e, "uplink connection lost");
                    } else {
                        tracing::debug!(error = %e, "uplink connect failed");
                    }
                    session.on_disconnect();
                    set_will(&mut eventloop, &session);
                    let delay = backoff.next_delay(rand::random());
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    // Clean shutdown: say so (retained), then disconnect. A dead link just lets the will fire.
    if session.connected {
        if let Some(mut s) = session.lock() {
            let state = s.state(Status::Offline);
            let _ = s.queue_control(&state);
        }
        session.pump();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(MqttOutgoing::Publish(pkid))) => {
                        session.on_outgoing_publish(pkid);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        session.on_puback(ack.pkid);
                        if session.inflight.is_empty() && session.handed.is_empty() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
        let _ = session.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    }
    session.on_disconnect();
    session.requeue_all();
}

fn set_will(eventloop: &mut EventLoop, session: &Session) {
    if let Some(will) = session.will() {
        eventloop.mqtt_options.set_last_will(will);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            parse_url("mqtts://broker.example:8883").unwrap(),
            BrokerAddr {
                host: "broker.example".into(),
                port: 8883,
                tls: true
            }
        );
        assert!(parse_url("tcp://x:1").is_err());
        assert!(parse_url("mqtt://x").is_err());
    }
}

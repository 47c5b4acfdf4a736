//! Discovery (DESIGN.md "Discovery"): the master announces each linked
//! `socp` local to the others with that local's own signed link hello
//! (`PEER_ANNOUNCE`); a local checks an announce as it would the hello
//! itself (key policy, signature, pinning, `--admit`) and asks the node to
//! dial it, so DMs between locals take one hop and the master carries none.
//! A local whose link has been gone [`WITHDRAW_AFTER`] is withdrawn
//! (`PEER_WITHDRAW`): the others stop dialing it.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{LinkHelloIn, Output, Pending, Router, canonical};
use crate::crypto::PublicKey;
use crate::wire::announce::HELLO_URL;
use crate::wire::ids::{self, IdKind};
use crate::wire::messages::{Message, PeerAnnounce, PeerHelloLink, PeerWithdraw, Proof, Role};

/// How long an announced local's link may stay down before the master
/// withdraws it: a restart or a moment's drop is not worth telling.
pub const WITHDRAW_AFTER: Duration = Duration::from_secs(60);
/// Withdrawals the master waits to make at once; a local that goes down
/// beyond it is withdrawn at once (so links that come and go under many
/// ids cannot grow the table).
pub const MAX_WITHDRAWING: usize = 4096;

/// A server to dial, as the master announced it and this local checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerDial {
    pub server_id: String,
    pub url: String,
    /// Its key (base64url SPKI): the answer to our hello must come from it.
    pub pubkey: String,
}

/// What the master knows to announce: the signed hello of each linked
/// `socp` local, by server id.
#[derive(Debug, Default)]
pub(super) struct Announced {
    hellos: HashMap<String, Proof>,
    /// Announced locals whose link is down, each with the timer that
    /// withdraws it unless it links again first.
    gone: HashMap<String, String>,
}

/// A message the router asks the announced-server dialer (`dial.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DialAsk {
    /// Dial this server (announced by the master, checked).
    Dial(PeerDial),
    /// Stop dialing this server (the master withdrew it); a live link to it
    /// stays until it drops.
    Stop(String),
}

impl Router {
    /// At the master, a `socp` local linked: it hears of every other linked
    /// `socp` local, and they hear of it.
    pub(super) fn announce_local(&mut self, hello: &LinkHelloIn) {
        if !self.cfg.master || !hello.socp || hello.role != Role::Local {
            return;
        }
        let Some(signed) = hello.signed.clone() else {
            return;
        };
        // Back before it was withdrawn: nothing to withdraw.
        if let Some(req_id) = self.announced.gone.remove(&hello.server_id) {
            self.pending.remove(&req_id);
        }
        let new = announce(&hello.server_id, signed.clone());
        let others: Vec<(String, Proof)> = self
            .announced
            .hellos
            .iter()
            .filter(|(id, _)| **id != hello.server_id)
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect();
        for (id, proof) in others {
            if self.links.get(&id).is_some_and(|l| l.socp) {
                self.send_link(&id, &id, new.clone());
                self.send_link(&hello.server_id, &hello.server_id, announce(&id, proof));
            }
        }
        self.announced
            .hellos
            .insert(hello.server_id.clone(), signed);
    }

    /// At the master, a local's link is gone: it is no longer announced,
    /// and the others are told so if it is not back within
    /// [`WITHDRAW_AFTER`].
    pub(super) fn forget_announced(&mut self, server: &str) {
        if self.announced.hellos.remove(server).is_none() {
            return;
        }
        if self.announced.gone.len() >= MAX_WITHDRAWING {
            return self.withdraw(server);
        }
        let req_id = self.new_req_id();
        self.pending
            .insert(req_id.clone(), Pending::Withdraw(server.to_owned()));
        if let Some(old) = self
            .announced
            .gone
            .insert(server.to_owned(), req_id.clone())
        {
            self.pending.remove(&old);
        }
        self.out.push(Output::Timer {
            req_id,
            after: WITHDRAW_AFTER,
        });
    }

    /// At the master, a gone local's time is up: withdrawn, unless it
    /// linked again meanwhile.
    pub(super) fn withdraw_timeout(&mut self, req_id: &str, server: &str) {
        if self.announced.gone.get(server).map(String::as_str) != Some(req_id) {
            return;
        }
        self.announced.gone.remove(server);
        if !self.links.contains_key(server) {
            self.withdraw(server);
        }
    }

    /// Tells every linked `socp` local that `server` is no longer announced.
    fn withdraw(&mut self, server: &str) {
        tracing::info!(server = %server, "withdrawing an announced local: its link is gone");
        let locals: Vec<String> = self
            .links
            .iter()
            .filter(|(id, l)| l.socp && id.as_str() != server)
            .filter(|(id, _)| self.servers.get(*id).is_some_and(|s| s.role == Role::Local))
            .map(|(id, _)| id.clone())
            .collect();
        let msg = Message::PeerWithdraw(PeerWithdraw {
            server_id: server.to_owned(),
            extra: Map::new(),
        });
        for id in locals {
            self.send_link(&id, &id, msg.clone());
        }
    }

    /// A local hears from its master that a server is withdrawn: its
    /// dialer stops (a live link to it stays: it is proof the server is
    /// alive), until the master announces it again.
    pub(super) fn peer_withdraw(&mut self, from: &str, w: PeerWithdraw) {
        if self.cfg.master || self.master_id.as_deref() != Some(from) {
            tracing::debug!(server = from, "ignored PEER_WITHDRAW not from our master");
            return;
        }
        if ids::classify(&w.server_id) != Ok(IdKind::LocalServer) {
            return;
        }
        tracing::info!(server = %w.server_id, "the master withdrew an announced server: no longer dialing it");
        self.out.push(Output::Undial(w.server_id));
    }

    /// A local hears of another local from its master: checked as the
    /// link hello itself would be, then dialed (by the smaller id of the
    /// two, so each pair forms one link and neither redials in vain).
    pub(super) fn peer_announce(&mut self, from: &str, a: PeerAnnounce) {
        if self.cfg.master || self.master_id.as_deref() != Some(from) {
            tracing::debug!(server = from, "ignored PEER_ANNOUNCE not from our master");
            return;
        }
        let id = a.server_id.clone();
        let dial = match self.check_announce(a) {
            Ok(dial) => dial,
            Err(why) => {
                tracing::warn!(server = %super::truncate(&id), why, "ignored announced server");
                return;
            }
        };
        if self.links.contains_key(&id) || self.cfg.me.as_str() > id.as_str() {
            return; // linked already, or it dials us
        }
        tracing::info!(server = %id, url = %dial.url, "dialing an announced server");
        self.out.push(Output::Dial(dial));
    }

    fn check_announce(&self, a: PeerAnnounce) -> Result<PeerDial, &'static str> {
        let id = a.server_id;
        if ids::classify(&id) != Ok(IdKind::LocalServer) {
            return Err("not a local server id");
        }
        if id == self.cfg.me {
            return Err("ourselves");
        }
        let bytes =
            canonical::map_to_string(&a.hello.payload).map_err(|_| "hello not canonical")?;
        let hello: PeerHelloLink = serde_json::from_value(Value::Object(a.hello.payload.clone()))
            .map_err(|_| "not a link hello")?;
        if hello.role != Role::Local {
            return Err("not a local");
        }
        let key =
            PublicKey::from_b64(&hello.pubkey).map_err(|_| "key refused by the key policy")?;
        key.verify_b64(bytes.as_bytes(), &a.hello.sig)
            .map_err(|_| "hello not signed by the key it names")?;
        if self
            .servers
            .get(&id)
            .is_some_and(|rec| rec.pubkey != hello.pubkey)
        {
            return Err("server id is pinned to another key");
        }
        if !self.admits(&id, &key) {
            return Err("not admitted (--admit)");
        }
        let url = dialable_url(&hello.extra).ok_or("no dialable url in its hello")?;
        Ok(PeerDial {
            server_id: id,
            url,
            pubkey: hello.pubkey,
        })
    }
}

fn announce(server_id: &str, hello: Proof) -> Message {
    Message::PeerAnnounce(PeerAnnounce {
        server_id: server_id.to_owned(),
        hello,
        extra: Map::new(),
    })
}

/// The `url` a hello names, if another server could dial it: `ws://` or
/// `wss://`, not a wildcard address.
pub(crate) fn dialable_url(extra: &Map<String, Value>) -> Option<String> {
    let url = extra.get(HELLO_URL)?.as_str()?;
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let unspecified = host.starts_with("0.0.0.0") || host.starts_with("[::]");
    (!host.is_empty() && !unspecified && url.len() <= 512).then(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::sim::{key, kind_of, payload_of};
    use super::super::{Input, RouterConfig};
    use super::*;
    use crate::crypto::PrivateKey;
    use crate::node::state::Snapshot;
    use crate::wire::Envelope;
    use crate::wire::messages::Kind;

    /// The smallest local server id: it dials every server announced to it.
    const FIRST: &str = "server_00000000-0000-4000-8000-000000000000";

    fn router(me: &str, master: bool) -> Router {
        let cfg = RouterConfig {
            me: me.into(),
            master,
            allow_legacy: false,
            pubkey: key("carol").public().to_b64().to_owned(),
            host: "127.0.0.1".into(),
            port: 1,
            url: String::new(),
            limits: Default::default(),
            max_group_members: 16,
            max_file_size: 1 << 20,
            admission: Default::default(),
            presence_cache: 0,
        };
        Router::new(cfg, Snapshot::default())
    }

    /// A signed link hello from `id`, as a connection hands it on.
    fn hello(conn: u64, id: &str, k: &PrivateKey, role: Role, socp: bool, dialed: bool) -> Input {
        let payload = PeerHelloLink {
            host: "127.0.0.1".into(),
            port: 9,
            pubkey: k.public().to_b64().to_owned(),
            role,
            caps: socp.then(|| super::super::our_caps(false, false)),
            session: None,
            extra: super::super::url_field(&format!("ws://127.0.0.1:{conn}")),
        };
        let mut env = Message::PeerHelloLink(payload.clone()).into_envelope(id, ids::TO_SERVER);
        env.ts = 1;
        env.sig = k
            .sign_b64(canonical::map_to_string(&env.payload).unwrap().as_bytes())
            .unwrap();
        Input::LinkHello(LinkHelloIn::new(
            conn,
            &env,
            payload,
            k.public().clone(),
            dialed,
            dialed && role == Role::Master,
            None,
        ))
    }

    fn announces(out: &[Output]) -> Vec<(u64, Map<String, Value>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(c, f) if kind_of(f) == Kind::PeerAnnounce => Some((*c, payload_of(f))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_master_announces_socp_locals_to_each_other_only() {
        let mut m = router(&ids::new_master_id(), true);
        let (l1, l2, r) = (
            ids::new_local_server_id(),
            ids::new_local_server_id(),
            ids::new_local_server_id(),
        );
        assert!(
            announces(&m.step(1, hello(1, &l1, key("alice"), Role::Local, true, false))).is_empty()
        );
        let out = m.step(2, hello(2, &l2, key("bob"), Role::Local, true, false));
        let mut sent: Vec<(u64, String)> = announces(&out)
            .into_iter()
            .map(|(c, p)| (c, p["server_id"].as_str().unwrap().to_owned()))
            .collect();
        sent.sort();
        assert_eq!(sent, [(1, l2.clone()), (2, l1.clone())]);
        // A reference local (no socp-v1) is neither announced nor told.
        let out = m.step(3, hello(3, &r, key("dave"), Role::Local, false, false));
        assert!(announces(&out).is_empty());
    }

    #[test]
    fn an_announced_hello_replayed_from_the_future_does_not_lock_its_server_out() {
        // Every socp local holds l1's signed hello (PEER_ANNOUNCE); the
        // envelope `ts` beside it is not signed.
        let mut m = router(&ids::new_master_id(), true);
        let l1 = ids::new_local_server_id();
        let linked = |conn: u64, ts: i64| {
            let Input::LinkHello(mut h) = hello(conn, &l1, key("alice"), Role::Local, true, false)
            else {
                unreachable!()
            };
            h.ts = ts;
            Input::LinkHello(h)
        };
        m.step(1_000, linked(1, 1_000));
        m.step(2_000, linked(2, i64::MAX / 2));
        // l1 itself links again, its clock right.
        m.step(10_000, linked(3, 10_000));
        assert_eq!(m.links.get(&l1).map(|l| l.conn), Some(3));
    }

    #[test]
    fn a_hello_meant_for_another_server_does_not_replace_a_link() {
        // l1 dials an announced server whose url leads to the master:
        // its hello names that server, and the master keeps l1's link.
        let mut m = router(&ids::new_master_id(), true);
        let l1 = ids::new_local_server_id();
        m.step(1, hello(1, &l1, key("alice"), Role::Local, true, false));
        let Input::LinkHello(mut h) = hello(2, &l1, key("alice"), Role::Local, true, false) else {
            unreachable!()
        };
        h.ts = 2;
        h.to = ids::new_local_server_id();
        m.step(2, Input::LinkHello(h));
        assert_eq!(m.links.get(&l1).map(|l| l.conn), Some(1));
    }

    /// A local linked to its master, and the announce the master would send
    /// for `id` (key erin).
    fn local_with_master() -> (Router, String) {
        let mut l = router(FIRST, false);
        let master = ids::new_master_id();
        l.step(1, hello(1, &master, key("dave"), Role::Master, true, true));
        (l, master)
    }

    fn announce_of(id: &str, k: &PrivateKey) -> PeerAnnounce {
        let Input::LinkHello(h) = hello(7, id, k, Role::Local, true, false) else {
            unreachable!()
        };
        PeerAnnounce {
            server_id: id.to_owned(),
            hello: h.signed.unwrap(),
            extra: Map::new(),
        }
    }

    fn dials(l: &mut Router, master: &str, a: PeerAnnounce) -> Vec<PeerDial> {
        let env = Envelope::new(Kind::PeerAnnounce.name(), master, FIRST, Map::new());
        let msg = Message::PeerAnnounce(a);
        l.step(2, Input::LinkFrame { conn: 1, env, msg })
            .into_iter()
            .filter_map(|o| match o {
                Output::Dial(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_local_dials_a_checked_announce_and_nothing_else() {
        let (mut l, master) = local_with_master();
        let id = ids::new_local_server_id();
        let good = announce_of(&id, key("erin"));
        let d = dials(&mut l, &master, good.clone());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].server_id, id);
        assert_eq!(d[0].url, "ws://127.0.0.1:7");
        // Another address than the one the server signed.
        let mut moved = good.clone();
        moved
            .hello
            .payload
            .insert(HELLO_URL.into(), Value::String("ws://evil:1".into()));
        assert!(dials(&mut l, &master, moved).is_empty());
        // Signed by another key than the one it names.
        let mut forged = good.clone();
        forged.hello.sig = announce_of(&id, key("alice")).hello.sig;
        assert!(dials(&mut l, &master, forged).is_empty());
        // Not from our master.
        let env = Envelope::new(Kind::PeerAnnounce.name(), &id, FIRST, Map::new());
        let out = l.step(
            3,
            Input::LinkFrame {
                conn: 9,
                env,
                msg: Message::PeerAnnounce(good),
            },
        );
        assert!(!out.iter().any(|o| matches!(o, Output::Dial(_))));
    }

    fn undials(l: &mut Router, conn: u64, from: &str, id: &str) -> Vec<String> {
        let env = Envelope::new(Kind::PeerWithdraw.name(), from, FIRST, Map::new());
        let msg = Message::PeerWithdraw(PeerWithdraw {
            server_id: id.to_owned(),
            extra: Map::new(),
        });
        l.step(3, Input::LinkFrame { conn, env, msg })
            .into_iter()
            .filter_map(|o| match o {
                Output::Undial(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_local_stops_dialing_only_what_its_master_withdraws() {
        let (mut l, master) = local_with_master();
        let id = ids::new_local_server_id();
        assert_eq!(undials(&mut l, 1, &master, &id), std::slice::from_ref(&id));
        // Not a local server's id: nothing to stop.
        assert!(undials(&mut l, 1, &master, &master).is_empty());
        // From another linked server: ignored.
        let other = ids::new_local_server_id();
        l.step(2, hello(2, &other, key("erin"), Role::Local, true, false));
        assert!(undials(&mut l, 2, &other, &id).is_empty());
    }

    #[test]
    fn the_master_withdraws_a_local_only_when_its_time_is_up_and_it_is_still_gone() {
        let mut m = router(&ids::new_master_id(), true);
        let (l1, l2) = (ids::new_local_server_id(), ids::new_local_server_id());
        m.step(1, hello(1, &l1, key("alice"), Role::Local, true, false));
        m.step(2, hello(2, &l2, key("bob"), Role::Local, true, false));
        let timers = |out: &[Output]| -> Vec<String> {
            out.iter()
                .filter_map(|o| match o {
                    Output::Timer { req_id, after } if *after == WITHDRAW_AFTER => {
                        Some(req_id.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        let withdrawals = |out: &[Output]| -> Vec<(u64, String)> {
            out.iter()
                .filter_map(|o| match o {
                    Output::Send(c, f) if kind_of(f) == Kind::PeerWithdraw => {
                        Some((*c, payload_of(f)["server_id"].as_str()?.to_owned()))
                    }
                    _ => None,
                })
                .collect()
        };
        // l2 drops and links again before its time is up: nothing said.
        let first = timers(&m.step(3, Input::LinkClosed(2)));
        assert_eq!(first.len(), 1);
        let Input::LinkHello(mut again) = hello(3, &l2, key("bob"), Role::Local, true, false)
        else {
            unreachable!()
        };
        again.ts = 4; // a later hello than the one it linked with first
        m.step(4, Input::LinkHello(again));
        assert_eq!(m.links.get(&l2).map(|l| l.conn), Some(3), "l2 linked again");
        let out = m.step(60_003, Input::Timeout(first[0].clone()));
        assert_eq!(withdrawals(&out), []);
        // l2 drops for good: withdrawn from l1 when its time is up.
        let second = timers(&m.step(70_000, Input::LinkClosed(3)));
        assert_eq!(second.len(), 1);
        let out = m.step(130_000, Input::Timeout(second[0].clone()));
        assert_eq!(withdrawals(&out), [(1, l2.clone())]);
    }

    fn extra(url: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(HELLO_URL.into(), Value::String(url.into()));
        m
    }

    #[test]
    fn only_dialable_urls_are_announced() {
        assert_eq!(
            dialable_url(&extra("ws://127.0.0.1:9102")).as_deref(),
            Some("ws://127.0.0.1:9102")
        );
        assert!(dialable_url(&extra("wss://chat.example:443")).is_some());
        assert!(dialable_url(&extra("ws://0.0.0.0:9102")).is_none());
        assert!(dialable_url(&extra("ws://[::]:9102")).is_none());
        assert!(dialable_url(&extra("http://a:1")).is_none());
        assert!(dialable_url(&Map::new()).is_none());
    }
}

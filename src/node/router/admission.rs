//! Who may join: the `--admit` check of a link hello (PROTOCOL.md C5) and
//! the master's registration policy and rates (C14), applied to hellos and
//! to `DB_REGISTER_USER` from locals alike.

use std::net::IpAddr;

use serde_json::Value;

use super::{RATE_SOURCES_MAX, Router, StoreOp};
use crate::crypto::PublicKey;
use crate::node::policy::{self, AdmitList, PolicyOp, PolicyState, RATE_WINDOW_MS, Registration};
use crate::node::records::UserRecord;
use crate::wire::ErrorCode;
use crate::wire::messages::Proof;

/// Where a registration came from, for its rate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum RegSource {
    /// A user's own connection, by IP address.
    Addr(IpAddr),
    /// A local server registering its users at the master.
    Server(String),
}

/// A registration the policy refused: the code and what the user is told.
pub(crate) type Refused = (ErrorCode, String);

impl Router {
    /// The policy tables as the store had them at start.
    pub fn set_policy(&mut self, state: PolicyState) {
        self.policy = state;
    }

    /// The servers `--admit` lists, as the node last read them.
    pub fn set_admitted(&mut self, list: AdmitList) {
        self.admitted = Some(list);
    }

    /// The `--admit` file, if any: the hub rereads it before each link hello.
    pub fn admit_file(&self) -> Option<&std::path::Path> {
        self.cfg.admission.admit.as_deref()
    }

    /// True if `--admit` is off or lists this server (by id or key).
    pub(super) fn admits(&self, id: &str, key: &PublicKey) -> bool {
        self.admitted.as_ref().is_none_or(|l| l.admits(id, key))
    }

    /// A local counts the unknown ids one address asks it to register.
    pub(super) fn local_rate(&mut self, addr: Option<IpAddr>) -> Result<(), Refused> {
        match addr {
            Some(ip) => self.take_rate(RegSource::Addr(ip)),
            None => Ok(()),
        }
    }

    /// Pins `user` to `key` as a new registration at the master, if the
    /// policy allows it: a reset id re-registers freely; otherwise the
    /// policy (open, invite, closed) and the source's hourly rate apply.
    pub(super) fn register_new(
        &mut self,
        user: &str,
        key: &std::sync::Arc<str>,
        proof: Option<&Proof>,
        source: Option<RegSource>,
    ) -> Result<(), Refused> {
        let reset = self.policy.resets.contains(user);
        let mut invite = None;
        if !reset {
            match self.cfg.admission.registration {
                Registration::Open => {}
                Registration::Closed => {
                    return Err((
                        ErrorCode::NotAllowed,
                        "registration is closed on this mesh: only known users may connect".into(),
                    ));
                }
                Registration::Invite => {
                    let code = proof
                        .and_then(|p| p.payload.get("invite"))
                        .and_then(Value::as_str);
                    let Some(code) = code else {
                        return Err((
                            ErrorCode::NotAllowed,
                            "this mesh registers new users by invite: ask its operator for one (socp client --invite CODE)".into(),
                        ));
                    };
                    if !policy::invite_is_genuine(&self.policy.invite_key, code) {
                        return Err((ErrorCode::NotAllowed, "this invite is not valid".into()));
                    }
                    if self.policy.used_invites.contains(code) {
                        return Err((ErrorCode::NotAllowed, "this invite was already used".into()));
                    }
                    invite = Some(code.to_owned());
                }
            }
            if let Some(source) = source {
                self.take_rate(source)?;
            }
        }
        if let Some(code) = &invite {
            self.policy.used_invites.insert(code.clone());
        }
        self.policy.resets.remove(user);
        let rec = UserRecord::new(key.clone(), proof.is_none(), self.now);
        self.users.insert(user.to_owned(), rec.clone());
        self.persist(StoreOp::PinUser(user.to_owned(), rec));
        if reset {
            self.drop_presence_of_old_key(user, key);
        }
        self.persist(StoreOp::Policy(PolicyOp::Registered {
            user: user.to_owned(),
            invite,
            at_ms: self.now,
        }));
        tracing::info!(user, "registered");
        Ok(())
    }

    /// Counts one registration for `source`, refusing it past the hourly bound.
    fn take_rate(&mut self, source: RegSource) -> Result<(), Refused> {
        let limit = match source {
            RegSource::Addr(_) => self.cfg.admission.per_address_hour,
            RegSource::Server(_) => self.cfg.admission.per_server_hour,
        };
        if limit == 0 {
            return Ok(());
        }
        let now = self.now;
        if self.reg_counts.len() >= RATE_SOURCES_MAX && !self.reg_counts.contains_key(&source) {
            self.prune_rates();
            if self.reg_counts.len() >= RATE_SOURCES_MAX {
                return Err((
                    ErrorCode::RateLimited,
                    "too many registrations on this server right now; try again later".into(),
                ));
            }
        }
        let (start, count) = self.reg_counts.entry(source.clone()).or_insert((now, 0));
        if now - *start >= RATE_WINDOW_MS {
            *start = now;
            *count = 0;
        }
        if *count >= limit {
            let who = match source {
                RegSource::Addr(_) => "your address",
                RegSource::Server(_) => "your server",
            };
            return Err((
                ErrorCode::RateLimited,
                format!("{who} registered {limit} new user ids this hour; try again later"),
            ));
        }
        *count += 1;
        Ok(())
    }

    /// Forgets rate windows that are over.
    pub(super) fn prune_rates(&mut self) {
        let now = self.now;
        self.reg_counts
            .retain(|_, (start, _)| now - *start < RATE_WINDOW_MS);
    }
}

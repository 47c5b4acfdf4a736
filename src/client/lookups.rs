//! Key lookups as plain data: whose directory keys were asked for and when,
//! what work waits for each answer, who asked on purpose (`/dbget`), and
//! whom the directory did not know lately (a negative answer, or none in
//! time, is remembered for [`UNKNOWN_TTL`] only: a user may join a moment
//! later). No I/O and no clock: the engine sends the lookups it is told to
//! send and passes the time in.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long to wait for the directory to answer a key lookup.
pub const LOOKUP_PATIENCE: Duration = Duration::from_secs(10);
/// How long a user the directory did not know (or did not answer for)
/// counts as unknown: their content is shown unverified at once meanwhile,
/// instead of each piece waiting for a lookup; after that, the next piece
/// asks again.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(5);

/// What to do when a user's key is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Send a lookup now (and say [`Lookups::unsent`] if that fails).
    Send,
    /// A lookup is in flight already: nothing to send.
    InFlight,
    /// Not connected, nothing sent. `waits`: work waits for this key, so
    /// the lookup goes out on connect; otherwise nothing asks again.
    Offline { waits: bool },
}

/// What the directory's answer for a user releases.
#[derive(Debug, PartialEq, Eq)]
pub struct Answered<W> {
    /// The user asked for this key (`/dbget`): show the answer.
    pub explicit: bool,
    /// The work that waited for the key, in the order it came.
    pub released: Vec<W>,
}

/// A lookup the directory did not answer in time.
#[derive(Debug, PartialEq, Eq)]
pub struct Expired<W> {
    pub user: String,
    /// The work that waited for the key, in the order it came.
    pub released: Vec<W>,
}

/// The client's key lookups; `W` is the work that waits for a key.
#[derive(Debug)]
pub struct Lookups<W> {
    patience: Duration,
    /// Lookups sent and not answered, and when they were sent.
    in_flight: HashMap<String, Instant>,
    waiting: HashMap<String, Vec<W>>,
    /// Users whose answer is to be shown (`/dbget`).
    explicit: HashSet<String>,
    /// Users the directory did not know (or did not answer for), and when
    /// it said so: until [`UNKNOWN_TTL`] has passed, their content is shown
    /// unverified instead of waiting.
    unknown: HashMap<String, Instant>,
}

impl<W> Default for Lookups<W> {
    fn default() -> Self {
        Lookups::new(LOOKUP_PATIENCE)
    }
}

impl<W> Lookups<W> {
    /// Lookups that expire when unanswered for longer than `patience`.
    pub fn new(patience: Duration) -> Self {
        Lookups {
            patience,
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            explicit: HashSet::new(),
            unknown: HashMap::new(),
        }
    }

    /// `user`'s key is needed: a lookup is sent at most once while one is
    /// in flight, and only when connected.
    pub fn ask(&mut self, user: &str, connected: bool, now: Instant) -> Ask {
        if self.in_flight.contains_key(user) {
            return Ask::InFlight;
        }
        if !connected {
            let waits = self.waiting.contains_key(user);
            return Ask::Offline { waits };
        }
        self.in_flight.insert(user.to_owned(), now);
        Ask::Send
    }

    /// The lookup [`Ask::Send`] asked for could not be sent.
    pub fn unsent(&mut self, user: &str) {
        self.in_flight.remove(user);
    }

    /// `work` waits for `user`'s key (then [`Lookups::ask`] for it).
    pub fn wait(&mut self, user: &str, work: W) {
        self.waiting.entry(user.to_owned()).or_default().push(work);
    }

    /// The user asked for `user`'s key (`/dbget`): the next ask sends a
    /// lookup even if one is in flight, and the answer is to be shown.
    pub fn explicit(&mut self, user: &str) {
        self.explicit.insert(user.to_owned());
        self.in_flight.remove(user);
    }

    /// The directory answered for `user` at `now`; `found`: with a usable key.
    pub fn answer(&mut self, user: &str, found: bool, now: Instant) -> Answered<W> {
        self.in_flight.remove(user);
        if found {
            self.unknown.remove(user);
        } else {
            self.unknown.insert(user.to_owned(), now);
        }
        Answered {
            explicit: self.explicit.remove(user),
            released: self.waiting.remove(user).unwrap_or_default(),
        }
    }

    /// Lookups unanswered for longer than the patience: their users count
    /// as unknown and what waited is released (sorted by user).
    pub fn expire(&mut self, now: Instant) -> Vec<Expired<W>> {
        let mut late: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) > self.patience)
            .map(|(user, _)| user.clone())
            .collect();
        late.sort();
        self.unknown
            .retain(|_, at| now.saturating_duration_since(*at) < UNKNOWN_TTL);
        late.into_iter()
            .map(|user| {
                self.in_flight.remove(&user);
                self.explicit.remove(&user);
                self.unknown.insert(user.clone(), now);
                let released = self.waiting.remove(&user).unwrap_or_default();
                Expired { user, released }
            })
            .collect()
    }

    /// After a (re)connect: answers to lookups sent before are lost, so
    /// none is in flight; returns the users work waits for, to ask again.
    pub fn reconnected(&mut self) -> Vec<String> {
        self.in_flight.clear();
        let mut users: Vec<String> = self.waiting.keys().cloned().collect();
        users.sort();
        users
    }

    /// True if work waits for `user`'s key.
    pub fn waits_for(&self, user: &str) -> bool {
        self.waiting.contains_key(user)
    }

    /// True if the directory did not know `user` (or did not answer) less
    /// than [`UNKNOWN_TTL`] before `now`.
    pub fn is_unknown(&self, user: &str, now: Instant) -> bool {
        self.unknown
            .get(user)
            .is_some_and(|at| now.saturating_duration_since(*at) < UNKNOWN_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn lookups() -> (Lookups<&'static str>, Instant) {
        (Lookups::new(PATIENCE), Instant::now())
    }

    #[test]
    fn a_lookup_is_sent_once_while_in_flight() {
        let (mut l, t0) = lookups();
        assert_eq!(l.ask("bob", true, t0), Ask::Send);
        assert_eq!(l.ask("bob", true, t0), Ask::InFlight);
        assert_eq!(l.ask("bob", false, t0), Ask::InFlight);
        assert_eq!(l.ask("carol", true, t0), Ask::Send);
        l.answer("bob", true, t0);
        assert_eq!(l.ask("bob", true, t0), Ask::Send);
    }

    #[test]
    fn an_unsent_lookup_is_not_in_flight() {
        let (mut l, t0) = lookups();
        assert_eq!(l.ask("bob", true, t0), Ask::Send);
        l.unsent("bob");
        assert_eq!(l.ask("bob", true, t0), Ask::Send);
    }

    #[test]
    fn an_answer_releases_what_waited_in_order() {
        let (mut l, t0) = lookups();
        assert!(!l.waits_for("bob"));
        l.wait("bob", "first");
        assert!(l.waits_for("bob"));
        assert_eq!(l.ask("bob", true, t0), Ask::Send);
        l.wait("bob", "second");
        l.wait("carol", "other");
        let a = l.answer("bob", true, t0);
        assert_eq!(
            a,
            Answered {
                explicit: false,
                released: vec!["first", "second"]
            }
        );
        assert!(!l.is_unknown("bob", t0));
        assert!(l.answer("bob", true, t0).released.is_empty());
        assert_eq!(l.answer("carol", true, t0).released, ["other"]);
    }

    #[test]
    fn not_found_marks_the_user_unknown_until_found() {
        let (mut l, t0) = lookups();
        l.wait("bob", "dm");
        l.ask("bob", true, t0);
        let a = l.answer("bob", false, t0);
        assert_eq!(a.released, ["dm"]);
        assert!(l.is_unknown("bob", t0));
        // An answer nobody asked for counts too.
        l.answer("bob", true, t0);
        assert!(!l.is_unknown("bob", t0));
    }

    #[test]
    fn a_negative_answer_expires() {
        let (mut l, t0) = lookups();
        l.answer("erin", false, t0);
        assert!(l.is_unknown("erin", t0 + UNKNOWN_TTL - Duration::from_millis(1)));
        assert!(
            !l.is_unknown("erin", t0 + UNKNOWN_TTL),
            "erin may have joined"
        );
        // A time-out counts the same way, and is forgotten too.
        l.ask("frank", true, t0);
        l.expire(t0 + PATIENCE + Duration::from_secs(1));
        let t1 = t0 + PATIENCE + Duration::from_secs(1);
        assert!(l.is_unknown("frank", t1));
        assert!(!l.is_unknown("frank", t1 + UNKNOWN_TTL));
    }

    #[test]
    fn unanswered_lookups_expire_after_the_patience() {
        let (mut l, t0) = lookups();
        l.wait("bob", "dm");
        l.ask("bob", true, t0);
        l.explicit("carol");
        l.ask("carol", true, t0 + Duration::from_secs(5));
        assert!(
            l.expire(t0 + PATIENCE).is_empty(),
            "not before the patience"
        );
        let late = l.expire(t0 + PATIENCE + Duration::from_millis(1));
        assert_eq!(
            late,
            [Expired {
                user: "bob".into(),
                released: vec!["dm"]
            }]
        );
        assert!(l.is_unknown("bob", t0 + PATIENCE));
        let t1 = t0 + PATIENCE;
        assert_eq!(l.ask("bob", true, t1), Ask::Send, "no longer in flight");
        let late = l.expire(t0 + Duration::from_secs(16));
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].user, "carol");
        assert!(l.is_unknown("carol", t0 + Duration::from_secs(16)));
        // A late answer to an expired /dbget is not shown.
        assert!(!l.answer("carol", true, t0).explicit);
        let late = l.expire(t1 + Duration::from_secs(11));
        assert_eq!(late.len(), 1, "bob's second lookup");
        assert!(late[0].released.is_empty());
        assert!(l.expire(t1 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn explicit_asks_again_and_shows_one_answer() {
        let (mut l, t0) = lookups();
        assert_eq!(l.ask("bob", true, t0), Ask::Send);
        l.explicit("bob");
        assert_eq!(l.ask("bob", true, t0), Ask::Send);
        assert!(l.answer("bob", false, t0).explicit);
        assert!(!l.answer("bob", false, t0).explicit);
    }

    #[test]
    fn offline_asks_wait_for_the_reconnect() {
        let (mut l, t0) = lookups();
        assert_eq!(l.ask("bob", false, t0), Ask::Offline { waits: false });
        l.wait("carol", "gshare");
        l.wait("alice", "dm");
        assert_eq!(l.ask("carol", false, t0), Ask::Offline { waits: true });
        assert_eq!(l.ask("dave", true, t0), Ask::Send);
        assert_eq!(l.reconnected(), ["alice", "carol"]);
        assert_eq!(l.ask("dave", true, t0), Ask::Send, "in flight no more");
        assert_eq!(l.ask("carol", true, t0), Ask::Send);
    }
}

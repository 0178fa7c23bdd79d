//! From school events to signed deliveries, with the faults real webhook
//! traffic has: redeliveries (some back to back, so they race), late
//! deliveries, and forged deliveries with a bad signature.
//!
//! Expected state: every original event is folded with the receiver's own
//! rules ([`crate::projection`]) as it is generated, so the expected
//! projection is exactly what a correct receiver must end with. Duplicates and
//! late deliveries must not change it. A forged delivery carries a tampered
//! body (progress 100 %, same event id) and a signature that does not match:
//! a correct receiver refuses it, and the genuine event is always delivered
//! as well (right after the forgery, as a retry would), so the expected state
//! includes the genuine event and never the forgery. A receiver that skips
//! verification stores the forgery, answers "duplicate" to the genuine event,
//! and `--verify` reports the damage.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::{School, SchoolConfig};
use crate::projection::learning::Learning;
use crate::projection::{self, Apply, Enrollment};
use crate::store::NewEvent;
use crate::thinkific::{self, SIGNATURE_HEADER, SUBDOMAIN_HEADER, TOPIC_HEADER};

/// Fault rates, each a probability per original event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub duplicates: f64,
    pub reorder: f64,
    pub bad_signatures: f64,
}

impl Faults {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, p) in [
            ("--duplicates", self.duplicates),
            ("--reorder", self.reorder),
            ("--bad-signatures", self.bad_signatures),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&p),
                "{name} must be a fraction between 0 and 1 (e.g. 0.05), got {p}"
            );
        }
        Ok(())
    }
}

/// Why a delivery is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The first delivery of an event, on time.
    Original,
    /// An original delivered later than events that happened after it.
    Late,
    /// A redelivery of an event already sent.
    Duplicate,
    /// A tampered body with a signature that does not match: must be refused.
    Forged,
}

impl Kind {
    /// Whether a correct receiver answers 2xx.
    pub fn should_be_accepted(self) -> bool {
        self != Kind::Forged
    }
}

/// One HTTP delivery: the raw body and the headers Thinkific sends with it.
/// This is also one line of an `--out` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub source: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// Informational (the simulator's bookkeeping); receivers and `import` ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
}

/// Everything that decides the traffic. Same config, same deliveries.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub school: SchoolConfig,
    /// Stop after this many original events (None: when every student is done).
    pub events: Option<u64>,
    pub faults: Faults,
    pub secret: String,
    pub source: String,
    pub subdomain: String,
}

/// The projection a correct receiver must end with.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub source: String,
    pub enrollments: BTreeMap<i64, Enrollment>,
    /// The lessons and quizzes sent, folded by the receiver's rules (the
    /// enrollments' part is applied when compared, see `verify`).
    pub learning: Learning,
    /// Original events generated (each must be stored exactly once).
    pub events: u64,
}

/// A held-back delivery: due at an output position; ties keep insertion order.
struct Held {
    due: u64,
    seq: u64,
    delivery: Delivery,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Iterator over deliveries; the expected state grows as it is consumed.
pub struct Traffic {
    config: TrafficConfig,
    school: School,
    rng: StdRng,
    expected: Expected,
    originals: u64,
    held: BinaryHeap<Reverse<Held>>,
    held_seq: u64,
    /// Ready to go out now, in order.
    ready: VecDeque<Delivery>,
    /// Deliveries emitted so far.
    position: u64,
}

impl Traffic {
    pub fn new(config: TrafficConfig) -> Traffic {
        // Faults draw from their own stream so that changing a fault rate
        // never changes the school itself.
        let rng = StdRng::seed_from_u64(config.school.seed ^ 0x5eed_fa17);
        Traffic {
            school: School::new(config.school.clone()),
            expected: Expected {
                source: config.source.clone(),
                ..Default::default()
            },
            config,
            rng,
            originals: 0,
            held: BinaryHeap::new(),
            held_seq: 0,
            ready: VecDeque::new(),
            position: 0,
        }
    }

    pub fn expected(&self) -> &Expected {
        &self.expected
    }

    /// Generates no new events; what is held back (late, duplicates) still comes out.
    pub fn stop_generating(&mut self) {
        self.config.events = Some(self.originals);
    }

    pub fn into_expected(self) -> Expected {
        self.expected
    }

    fn delivery(&self, body: String, signed_body: &[u8], topic: String, kind: Kind) -> Delivery {
        let mut headers = BTreeMap::new();
        headers.insert(
            SIGNATURE_HEADER.to_owned(),
            thinkific::sign(self.config.secret.as_bytes(), signed_body),
        );
        headers.insert(TOPIC_HEADER.to_owned(), topic);
        headers.insert(SUBDOMAIN_HEADER.to_owned(), self.config.subdomain.clone());
        Delivery {
            source: self.config.source.clone(),
            headers,
            body,
            kind: Some(kind),
        }
    }

    fn hold(&mut self, after: u64, delivery: Delivery) {
        self.held_seq += 1;
        self.held.push(Reverse(Held {
            due: self.position + after,
            seq: self.held_seq,
            delivery,
        }));
    }

    /// Folds an original event into the expected state, through the same
    /// parse and rules as the receiver.
    fn expect(&mut self, body: &str) {
        self.expected.events += 1;
        let envelope = thinkific::parse(body.as_bytes(), None)
            .expect("the simulator generates valid Thinkific bodies");
        let event =
            NewEvent::from_envelope(&self.config.source, &envelope, body.to_owned(), Utc::now());
        if let Some(learned) = &event.learning {
            self.expected.learning.apply(&self.config.source, learned);
        }
        if let Some(e) = event.enrollment {
            let current = self.expected.enrollments.get(&e.payload.id);
            match projection::apply(current, &self.config.source, &e) {
                Apply::Newer(next) => {
                    self.expected.enrollments.insert(next.enrollment_id, next);
                }
                Apply::Older => {
                    unreachable!("the model generates the events of one enrollment in time order")
                }
            }
        }
    }

    /// Generates the next original event and schedules it and its faults.
    fn produce(&mut self) -> bool {
        if self.config.events.is_some_and(|n| self.originals >= n) {
            return false;
        }
        let Some(event) = self.school.next() else {
            return false;
        };
        self.originals += 1;
        let body = event.body(self.school.tenant_id());
        self.expect(&body);
        let topic = event.topic();
        let f = self.config.faults;

        // `ready` is empty here: push in the order the deliveries go out.
        if self.rng.random_bool(f.bad_signatures) {
            // Tampered body (progress to 100 %), signed as the genuine one,
            // arriving first: the worst case for a receiver that does not verify.
            let mut forged: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
            forged["payload"]["percentage_completed"] = "100.0".into();
            let forged = serde_json::to_string(&forged).expect("JSON serializes");
            let d = self.delivery(forged, body.as_bytes(), topic.clone(), Kind::Forged);
            self.ready.push_back(d);
        }
        let late = self.rng.random_bool(f.reorder);
        let kind = if late { Kind::Late } else { Kind::Original };
        let genuine = self.delivery(body.clone(), body.as_bytes(), topic, kind);
        let duplicate = self.rng.random_bool(f.duplicates).then(|| {
            let mut dup = genuine.clone();
            dup.kind = Some(Kind::Duplicate);
            dup
        });
        if late {
            let after = self.rng.random_range(1..50);
            self.hold(after, genuine);
        } else {
            self.ready.push_back(genuine);
        }
        if let Some(dup) = duplicate {
            if self.rng.random_bool(0.5) {
                // Back to back: with concurrency both are in flight together.
                self.ready.push_back(dup);
            } else {
                let after = self.rng.random_range(1..200);
                self.hold(after, dup);
            }
        }
        true
    }

    fn emit(&mut self, d: Delivery) -> Option<Delivery> {
        self.position += 1;
        Some(d)
    }
}

impl Iterator for Traffic {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        loop {
            if self
                .held
                .peek()
                .is_some_and(|Reverse(h)| h.due <= self.position)
            {
                let Reverse(h) = self.held.pop().expect("peeked");
                return self.emit(h.delivery);
            }
            if let Some(d) = self.ready.pop_front() {
                return self.emit(d);
            }
            if !self.produce() {
                // The school is done: flush what is held back, in due order.
                let Reverse(h) = self.held.pop()?;
                return self.emit(h.delivery);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(faults: Faults) -> TrafficConfig {
        TrafficConfig {
            school: SchoolConfig {
                students: 200,
                ..Default::default()
            },
            events: None,
            faults,
            secret: "k".into(),
            source: "default".into(),
            subdomain: "s".into(),
        }
    }

    #[test]
    fn faults_add_deliveries_but_never_change_the_expected_state() {
        let clean: Vec<Delivery> = Traffic::new(config(Faults::default())).collect();
        assert!(clean.iter().all(|d| d.kind == Some(Kind::Original)));
        let faults = Faults {
            duplicates: 0.1,
            reorder: 0.1,
            bad_signatures: 0.05,
        };
        let mut faulty = Traffic::new(config(faults));
        let deliveries: Vec<Delivery> = faulty.by_ref().collect();
        let count = |k: Kind| deliveries.iter().filter(|d| d.kind == Some(k)).count();
        assert_eq!(count(Kind::Original) + count(Kind::Late), clean.len());
        assert!(count(Kind::Late) > 0 && count(Kind::Duplicate) > 0 && count(Kind::Forged) > 0);

        let mut plain = Traffic::new(config(Faults::default()));
        plain.by_ref().for_each(drop);
        assert_eq!(plain.expected().enrollments, faulty.expected().enrollments);

        // A late delivery really is late: something generated after it went out first.
        let pos = |id: &str| clean.iter().position(|d| d.body == id).unwrap();
        let late_then_earlier = deliveries
            .windows(2)
            .any(|w| w[1].kind == Some(Kind::Late) && pos(&w[1].body) < pos(&w[0].body));
        assert!(late_then_earlier);
    }

    #[test]
    fn forged_deliveries_fail_verification_and_genuine_ones_pass() {
        let faults = Faults {
            bad_signatures: 0.2,
            ..Default::default()
        };
        for d in Traffic::new(config(faults)).take(500) {
            let sig = d.headers[SIGNATURE_HEADER].as_bytes();
            let verdict = thinkific::verify(b"k", d.body.as_bytes(), Some(sig));
            assert_eq!(verdict.is_ok(), d.kind != Some(Kind::Forged), "{d:?}");
        }
    }

    #[test]
    fn an_event_cap_is_honoured() {
        let mut t = Traffic::new(TrafficConfig {
            events: Some(123),
            ..config(Faults::default())
        });
        assert_eq!(t.by_ref().count(), 123);
        assert_eq!(t.expected().events, 123);
    }
}

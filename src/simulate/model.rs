//! The deterministic school: students arrive, sign up, buy or trial courses,
//! complete lessons and (some of them) finish. Pure and seeded: the same
//! [`SchoolConfig`] always yields the same events in the same order.
//!
//! Generation streams: a student's whole plan is drawn when they arrive, then
//! a priority queue over simulated time interleaves the plans of everyone
//! currently active, so memory stays proportional to active students, not to
//! the size of the school.
//!
//! Longer than 600 lines because of its unit tests; the model itself is one piece (a
//! student's plan is drawn whole), and splitting it would scatter its invariants.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

/// The shape of the simulated school.
#[derive(Debug, Clone)]
pub struct SchoolConfig {
    pub seed: u64,
    pub students: u64,
    pub courses: u32,
    /// Students sign up spread over this many simulated days.
    pub arrival_days: f64,
    /// When the first student arrives (simulated time, not wall time).
    pub start: DateTime<Utc>,
    pub tenant_id: String,
}

impl Default for SchoolConfig {
    fn default() -> Self {
        SchoolConfig {
            seed: 1,
            students: 100,
            courses: 5,
            arrival_days: 30.0,
            start: Utc.with_ymd_and_hms(2025, 1, 6, 9, 0, 0).unwrap(),
            tenant_id: "59".into(),
        }
    }
}

/// One event of the school's life, before it becomes a signed delivery.
#[derive(Debug, Clone)]
pub struct SchoolEvent {
    pub at: DateTime<Utc>,
    /// Thinkific-style envelope id: a long digit string, unique per event.
    pub id: String,
    pub resource: &'static str,
    pub action: &'static str,
    pub payload: Value,
}

impl SchoolEvent {
    pub fn topic(&self) -> String {
        format!("{}.{}", self.resource, self.action)
    }

    /// The raw JSON body, shaped like Thinkific's published samples.
    pub fn body(&self, tenant_id: &str) -> String {
        #[derive(Serialize)]
        struct Envelope<'a> {
            id: &'a str,
            resource: &'a str,
            action: &'a str,
            tenant_id: &'a str,
            created_at: String,
            payload: &'a Value,
        }
        serde_json::to_string(&Envelope {
            id: &self.id,
            resource: self.resource,
            action: self.action,
            tenant_id,
            created_at: ts(self.at),
            payload: &self.payload,
        })
        .expect("JSON values serialize")
    }
}

/// RFC 3339 with milliseconds, as Thinkific writes timestamps.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Clone)]
struct Course {
    id: i64,
    name: String,
    lessons: u32,
    /// Days of access after enrolling; None = lifetime access.
    access_days: Option<i64>,
    price_cents: i64,
}

#[derive(Debug, Clone)]
struct Student {
    id: i64,
    first_name: &'static str,
    last_name: &'static str,
    email: String,
}

/// What happens at one point of a student's plan.
#[derive(Debug, Clone)]
enum Step {
    Signup,
    Order {
        course: usize,
        order_id: i64,
    },
    Enrollment {
        action: &'static str,
        course: usize,
        enrollment: usize,
        pct: f64,
        trial: bool,
    },
    Lesson {
        course: usize,
        enrollment: usize,
        lesson: u32,
    },
    /// The quiz that ends a chapter (every fifth lesson is one).
    Quiz {
        course: usize,
        lesson: u32,
    },
}

/// Every fifth lesson ends its chapter with a quiz.
const QUIZ_EVERY: u32 = 5;

/// The per-enrollment facts every enrollment payload repeats.
#[derive(Debug, Clone)]
struct EnrollmentFacts {
    id: i64,
    enrolled_at: DateTime<Utc>,
    expiry: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
}

struct Plan {
    student: Student,
    steps: Vec<(DateTime<Utc>, Step)>,
    enrollments: Vec<EnrollmentFacts>,
    next: usize,
}

/// Streams the school's events in simulated-time order.
pub struct School {
    config: SchoolConfig,
    rng: StdRng,
    courses: Vec<Course>,
    /// Students who have not arrived yet.
    arrived: u64,
    next_arrival: DateTime<Utc>,
    /// (time of next step, plan key) of active students.
    queue: BinaryHeap<Reverse<(DateTime<Utc>, u64)>>,
    plans: HashMap<u64, Plan>,
    next_enrollment_id: i64,
    next_order_id: i64,
    emitted: u64,
}

const FIRST_NAMES: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Edsger",
    "Radia",
    "Donald",
    "Sophie",
    "Tim",
    "Hedy",
    "John",
    "Katherine",
    "Niklaus",
    "Anita",
    "Guido",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Knuth",
    "Wilson",
    "Berners-Lee",
    "Lamarr",
    "McCarthy",
    "Johnson",
    "Wirth",
    "Borg",
    "van Rossum",
];
const SUBJECTS: &[&str] = &[
    "Watercolor Basics",
    "Intro to Bookkeeping",
    "Sourdough Mastery",
    "Conversational Spanish",
    "Python for Analysts",
    "Guitar in 30 Days",
    "Mindful Leadership",
    "Home Barista",
    "Photography Fundamentals",
    "Yoga for Desk Workers",
];

impl School {
    pub fn new(config: SchoolConfig) -> School {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let courses = (0..config.courses.max(1))
            .map(|i| {
                let id = 1000 + i64::from(i);
                Course {
                    id,
                    name: format!("{} {}", SUBJECTS[i as usize % SUBJECTS.len()], i / 10 + 1),
                    lessons: rng.random_range(5..=40),
                    access_days: match rng.random_range(0..10) {
                        0 => Some(30),
                        1 | 2 => Some(365),
                        _ => None,
                    },
                    price_cents: [0, 1900, 4900, 9900, 19900][rng.random_range(0..5)],
                }
            })
            .collect();
        School {
            next_arrival: config.start,
            config,
            rng,
            courses,
            arrived: 0,
            queue: BinaryHeap::new(),
            plans: HashMap::new(),
            next_enrollment_id: 1,
            next_order_id: 1,
            emitted: 0,
        }
    }

    pub fn tenant_id(&self) -> &str {
        &self.config.tenant_id
    }

    /// Mean gap between two arrivals, in milliseconds.
    fn mean_gap_ms(&self) -> f64 {
        self.config.arrival_days * 86_400_000.0 / self.config.students.max(1) as f64
    }

    /// Exponential draw with the given mean (memoryless arrivals and gaps).
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.rng.random::<f64>()).ln()
    }

    fn admit_student(&mut self) {
        let key = self.arrived;
        self.arrived += 1;
        let at = self.next_arrival;
        let gap = self.exp(self.mean_gap_ms()).max(1.0);
        self.next_arrival = at + Duration::milliseconds(gap as i64);
        let plan = self.plan_student(key, at);
        let first = plan.steps[0].0;
        self.plans.insert(key, plan);
        self.queue.push(Reverse((first, key)));
    }

    /// Draws a student's whole story: signup, then 1–3 courses, each a trial
    /// (converting or not) or a purchase, lessons, and completion or a stall.
    fn plan_student(&mut self, key: u64, signup: DateTime<Utc>) -> Plan {
        let id = 10_000 + key as i64;
        let first_name = FIRST_NAMES[self.rng.random_range(0..FIRST_NAMES.len())];
        let last_name = LAST_NAMES[self.rng.random_range(0..LAST_NAMES.len())];
        let email = match self.rng.random_range(0..100) {
            // Thinkific does not validate addresses: keep some odd ones.
            0 => format!("[TEST] {}.{id}@example.com", first_name.to_lowercase()),
            1 => format!("{}+Course{id}@Example.COM", first_name.to_uppercase()),
            _ => format!(
                "{}.{}{id}@example.com",
                first_name.to_lowercase(),
                last_name.to_lowercase().replace(' ', "")
            ),
        };
        let student = Student {
            id,
            first_name,
            last_name,
            email,
        };
        let mut steps = vec![(signup, Step::Signup)];
        let mut enrollments = Vec::new();

        let wanted = match self.rng.random_range(0..10) {
            0..6 => 1,
            6..9 => 2,
            _ => 3,
        }
        .min(self.courses.len());
        let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
        while chosen.len() < wanted {
            // Popularity is skewed: low course numbers sell more.
            let u: f64 = self.rng.random();
            let c = ((u * u) * self.courses.len() as f64) as usize;
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }

        for (n, course) in chosen.into_iter().enumerate() {
            let offset_ms = if n == 0 {
                self.rng.random_range(60_000..1_800_000)
            } else {
                self.exp(5.0 * 86_400_000.0) as i64 + 60_000
            };
            let mut t = signup + Duration::milliseconds(offset_ms);
            let c = self.courses[course].clone();
            let enrollment = enrollments.len();
            enrollments.push(EnrollmentFacts {
                id: self.next_enrollment_id,
                enrolled_at: t,
                expiry: c.access_days.map(|d| t + Duration::days(d)),
                completed_at: None,
            });
            self.next_enrollment_id += 1;

            let mut in_trial = self.rng.random_bool(0.15);
            let converts = in_trial && self.rng.random_bool(0.5);
            let completes = self.rng.random_bool(0.45);
            // Lessons done before stalling (or all of them).
            let stop_at = if completes {
                c.lessons
            } else {
                self.rng.random_range(0..c.lessons)
            };
            let trial_lessons = if in_trial {
                self.rng.random_range(0..=3.min(stop_at))
            } else {
                0
            };

            if in_trial {
                steps.push((
                    t,
                    Step::Enrollment {
                        action: "trial",
                        course,
                        enrollment,
                        pct: 0.0,
                        trial: true,
                    },
                ));
            } else {
                self.buy(&mut steps, &mut t, course, enrollment, &c, 0.0);
            }
            for lesson in 1..=stop_at {
                if in_trial && lesson > trial_lessons {
                    if !converts {
                        break; // the trial never converts
                    }
                    in_trial = false;
                    t += Duration::milliseconds(self.exp(4.0 * 86_400_000.0) as i64 + 1000);
                    let pct = pct(lesson - 1, c.lessons);
                    self.buy(&mut steps, &mut t, course, enrollment, &c, pct);
                }
                t += Duration::milliseconds(self.exp(86_400_000.0) as i64 + 60_000);
                steps.push((
                    t,
                    Step::Lesson {
                        course,
                        enrollment,
                        lesson,
                    },
                ));
                if lesson % QUIZ_EVERY == 0 {
                    // Attempted as the lesson completes (no draw from the rng:
                    // the rest of the school stays as it was).
                    steps.push((
                        t + Duration::milliseconds(100),
                        Step::Quiz { course, lesson },
                    ));
                }
                t += Duration::milliseconds(self.rng.random_range(200..3000));
                steps.push((
                    t,
                    Step::Enrollment {
                        action: "progress",
                        course,
                        enrollment,
                        pct: pct(lesson, c.lessons),
                        trial: in_trial,
                    },
                ));
            }
            if completes && !in_trial {
                t += Duration::milliseconds(self.rng.random_range(50..2000));
                enrollments[enrollment].completed_at = Some(t);
                steps.push((
                    t,
                    Step::Enrollment {
                        action: "completed",
                        course,
                        enrollment,
                        pct: 100.0,
                        trial: false,
                    },
                ));
            }
        }
        // Several courses interleave; times within one enrollment only increase.
        steps.sort_by_key(|s| s.0);
        Plan {
            student,
            steps,
            enrollments,
            next: 0,
        }
    }

    /// order.created (for paid courses), then enrollment.created.
    fn buy(
        &mut self,
        steps: &mut Vec<(DateTime<Utc>, Step)>,
        t: &mut DateTime<Utc>,
        course: usize,
        enrollment: usize,
        c: &Course,
        pct: f64,
    ) {
        if c.price_cents > 0 {
            steps.push((
                *t,
                Step::Order {
                    course,
                    order_id: self.next_order_id,
                },
            ));
            self.next_order_id += 1;
            *t += Duration::milliseconds(self.rng.random_range(300..5000));
        }
        steps.push((
            *t,
            Step::Enrollment {
                action: "created",
                course,
                enrollment,
                pct,
                trial: false,
            },
        ));
    }

    /// Thinkific-style envelope id, 23 digits like the published ones: UTC
    /// time to the millisecond, then a six-digit sequence number, so ids are
    /// unique (below a million events a millisecond) and grow with time.
    fn event_id(&mut self, at: DateTime<Utc>) -> String {
        self.emitted += 1;
        format!(
            "{}{:06}",
            at.format("%Y%m%d%H%M%S%3f"),
            self.emitted % 1_000_000
        )
    }

    fn render(&mut self, at: DateTime<Utc>, key: u64, step: Step) -> SchoolEvent {
        let id = self.event_id(at);
        let plan = &self.plans[&key];
        let s = &plan.student;
        let user = json!({
            "email": s.email, "first_name": s.first_name, "id": s.id, "last_name": s.last_name,
        });
        let (resource, action, payload) = match step {
            Step::Signup => (
                "user",
                "signup",
                json!({
                    "id": s.id, "email": s.email, "first_name": s.first_name,
                    "last_name": s.last_name,
                    "full_name": format!("{} {}", s.first_name, s.last_name),
                    "company": null, "roles": [], "avatar_url": null, "bio": null,
                    "headline": null, "affiliate_code": null, "external_source": null,
                    "administered_course_ids": [], "custom_profile_fields": [],
                    "created_at": ts(at),
                }),
            ),
            // As Thinkific publishes it: `amount_dollars` a number, `status`
            // "Complete", `coupon` an object or null, `items[]`.
            Step::Order { course, order_id } => {
                let c = &self.courses[course];
                let dollars = c.price_cents as f64 / 100.0;
                let coupon = (order_id % 4 == 0).then(|| {
                    json!({"id": 9_000_000 + order_id, "code": format!("SAVE{order_id}"),
                           "promotion_id": 700_000 + order_id % 10})
                });
                (
                    "order",
                    "created",
                    json!({
                        "affiliate_referral_code": null,
                        "amount_cents": c.price_cents,
                        "amount_dollars": dollars,
                        "billing_name": format!("{} {}", s.first_name, s.last_name),
                        "coupon": coupon,
                        "created_at": ts(at),
                        "id": order_id,
                        "order_number": 1000 + order_id,
                        "payment_type": "one-time",
                        "product_id": c.id + 5000,
                        "product_name": c.name,
                        "status": "Complete",
                        "items": [{"product_id": c.id + 5000, "product_name": c.name,
                                   "amount_dollars": dollars, "amount_cents": c.price_cents}],
                        "user": user,
                    }),
                )
            }
            // As Thinkific publishes it: the enrollment's id (the join key),
            // the chapter, the lesson's position and type; no completion time.
            Step::Lesson {
                course,
                enrollment,
                lesson,
            } => {
                let c = &self.courses[course];
                let e = &plan.enrollments[enrollment];
                (
                    "lesson",
                    "completed",
                    json!({
                        "chapter": {"id": c.id * 100 + i64::from((lesson - 1) / 5),
                                    "name": format!("Chapter {}", (lesson - 1) / 5 + 1)},
                        "course": {"id": c.id, "name": c.name},
                        "enrollment": {"id": e.id},
                        "lesson": {"id": c.id * 1000 + i64::from(lesson),
                                   "name": format!("Lesson {lesson}"),
                                   "position": lesson - 1,
                                   "type": if lesson % 3 == 0 { "Text" } else { "Video" }},
                        "user": user,
                    }),
                )
            }
            Step::Quiz { course, lesson } => {
                let c = &self.courses[course];
                // A grade from the ids: 40–100, the same for the same student and quiz.
                let correct = ((s.id * 31 + i64::from(lesson) * 7) % 7) + 4;
                (
                    "quiz",
                    "attempted",
                    json!({
                        "attempts": 1,
                        "correct_count": correct,
                        "incorrect_count": 10 - correct,
                        "grade": correct as f64 * 10.0,
                        "result_id": c.id * 1_000_000 + s.id,
                        "quiz": {"id": c.id * 1000 + i64::from(lesson),
                                 "name": format!("Chapter {} quiz", lesson / QUIZ_EVERY)},
                        "user": user,
                    }),
                )
            }
            Step::Enrollment {
                action,
                course,
                enrollment,
                pct,
                trial,
            } => {
                let c = &self.courses[course];
                let e = &plan.enrollments[enrollment];
                let completed_at = (action == "completed").then(|| ts(at));
                (
                    "enrollment",
                    action,
                    json!({
                        "activated_at": ts(e.enrolled_at),
                        "completed_at": completed_at,
                        "course": {"id": c.id, "name": c.name},
                        "course_id": c.id,
                        "created_at": ts(e.enrolled_at),
                        "expiry_date": e.expiry.map(ts),
                        "free_trial": trial,
                        "id": e.id,
                        // Thinkific sends a string on a 0–100 scale.
                        "percentage_completed": format!("{pct:.1}"),
                        "started_at": ts(e.enrolled_at),
                        "updated_at": ts(at),
                        "user": user,
                    }),
                )
            }
        };
        SchoolEvent {
            at,
            id,
            resource,
            action,
            payload,
        }
    }
}

/// Progress after `done` of `total` lessons, to one decimal like Thinkific.
fn pct(done: u32, total: u32) -> f64 {
    (f64::from(done) * 1000.0 / f64::from(total.max(1))).round() / 10.0
}

impl Iterator for School {
    type Item = SchoolEvent;

    fn next(&mut self) -> Option<SchoolEvent> {
        loop {
            let due_arrival = self.arrived < self.config.students
                && self
                    .queue
                    .peek()
                    .is_none_or(|Reverse((t, _))| self.next_arrival <= *t);
            if due_arrival {
                self.admit_student();
                continue;
            }
            let Reverse((at, key)) = self.queue.pop()?;
            let plan = self.plans.get_mut(&key).expect("queued plans exist");
            let step = plan.steps[plan.next].1.clone();
            plan.next += 1;
            let more = plan.steps.get(plan.next).map(|s| s.0);
            let event = self.render(at, key, step);
            match more {
                Some(t) => self.queue.push(Reverse((t, key))),
                None => {
                    self.plans.remove(&key);
                }
            }
            return Some(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_school_and_time_only_moves_forward() {
        let config = SchoolConfig {
            students: 50,
            ..Default::default()
        };
        let a: Vec<String> = School::new(config.clone()).map(|e| e.body("59")).collect();
        let b: Vec<String> = School::new(config.clone()).map(|e| e.body("59")).collect();
        assert_eq!(a, b);
        let other: Vec<String> = School::new(SchoolConfig {
            seed: 2,
            ..config.clone()
        })
        .map(|e| e.body("59"))
        .collect();
        assert_ne!(a, other);
        let times: Vec<_> = School::new(config).map(|e| e.at).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn every_lifecycle_topic_appears_and_ids_are_unique() {
        let events: Vec<SchoolEvent> = School::new(SchoolConfig {
            students: 300,
            ..Default::default()
        })
        .collect();
        let topics: std::collections::BTreeSet<String> = events.iter().map(|e| e.topic()).collect();
        for t in [
            "user.signup",
            "order.created",
            "enrollment.trial",
            "enrollment.created",
            "lesson.completed",
            "enrollment.progress",
            "enrollment.completed",
        ] {
            assert!(topics.contains(t), "{t} missing from {topics:?}");
        }
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), events.len());
        assert!(
            events
                .iter()
                .all(|e| e.id.len() == 23 && e.id.bytes().all(|b| b.is_ascii_digit()))
        );
    }

    #[test]
    fn lessons_and_orders_have_the_published_shapes() {
        let published = |sample: &str| -> serde_json::Value {
            serde_json::from_str::<serde_json::Value>(sample).unwrap()["payload"].clone()
        };
        let keys = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let lesson = published(crate::thinkific::samples::LESSON_COMPLETED);
        let order = published(crate::thinkific::samples::ORDER_CREATED);
        let (mut lessons, mut orders, mut coupons) = (0, 0, [0, 0]);
        let mut enrollment_ids = std::collections::HashSet::new();
        for e in School::new(SchoolConfig::default()) {
            match e.topic().as_str() {
                "enrollment.created" | "enrollment.trial" => {
                    enrollment_ids.insert(e.payload["id"].as_i64().unwrap());
                }
                "lesson.completed" => {
                    lessons += 1;
                    assert_eq!(keys(&e.payload), keys(&lesson));
                    assert_eq!(keys(&e.payload["lesson"]), keys(&lesson["lesson"]));
                    assert!(e.payload["lesson"]["position"].is_u64());
                    let id = e.payload["enrollment"]["id"].as_i64().unwrap();
                    assert!(
                        enrollment_ids.contains(&id),
                        "joins an enrollment sent before"
                    );
                }
                "order.created" => {
                    orders += 1;
                    assert_eq!(keys(&e.payload), keys(&order));
                    assert!(e.payload["amount_dollars"].is_number());
                    assert_eq!(e.payload["status"], "Complete");
                    assert_eq!(keys(&e.payload["items"][0]), keys(&order["items"][0]));
                    match &e.payload["coupon"] {
                        serde_json::Value::Null => coupons[0] += 1,
                        c => {
                            assert_eq!(keys(c), keys(&order["coupon"]));
                            coupons[1] += 1
                        }
                    }
                }
                _ => {}
            }
        }
        assert!(lessons > 0 && orders > 0);
        assert!(
            coupons[0] > 0 && coupons[1] > 0,
            "with and without a coupon"
        );
    }

    #[test]
    fn percentages_are_strings_and_rise_within_an_enrollment() {
        let mut last: HashMap<i64, f64> = HashMap::new();
        for e in School::new(SchoolConfig::default()) {
            if e.resource != "enrollment" {
                continue;
            }
            let p = e.payload["percentage_completed"]
                .as_str()
                .expect("a string");
            let p: f64 = p.parse().unwrap();
            let id = e.payload["id"].as_i64().unwrap();
            let prev = last.insert(id, p).unwrap_or(0.0);
            assert!(p >= prev, "enrollment {id}: {prev} then {p}");
        }
    }
}

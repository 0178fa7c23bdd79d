//! The Thinkific webhook envelope and the typed enrollment payload.
//!
//! Parsing is lenient exactly where Thinkific is inconsistent (ids as strings or
//! numbers, `percentage_completed` as a 0–100 string or number in webhooks and a
//! 0.0–1.0 number from the REST API (see [`webhook_percentage`]), null
//! timestamps, odd e-mail addresses, unknown extra fields) and strict elsewhere
//! (the body must be a JSON object with an id, a topic and a payload object).
//!
//! Longer than 600 lines because of its unit tests (a third of the file): one case per
//! quirk of the wire contract, kept beside the parser they pin down.

use chrono::{DateTime, Datelike, NaiveDateTime, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Why a body is not an acceptable Thinkific delivery. Shown to the sender.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("empty body: a Thinkific delivery is a JSON object")]
    Empty,
    #[error("body is not valid UTF-8 (invalid byte at offset {0}): Thinkific sends UTF-8 JSON")]
    NotUtf8(usize),
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "body is JSON but not an object: a Thinkific delivery is an object with id, resource, action and payload"
    )]
    NotObject,
    #[error("envelope field `{0}` is missing")]
    Missing(&'static str),
    #[error(
        "envelope field `{0}` is missing: a delivery's topic is read from the signed body's `resource` and `action` only (the X-Thinkific-Topic header is not signed)"
    )]
    TopicMissing(&'static str),
    #[error("envelope field `{field}` is invalid: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("payload field `{field}` is invalid: {why}")]
    Payload { field: String, why: String },
}

impl ParseError {
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::Empty => "body_empty",
            ParseError::NotUtf8(_) => "body_not_utf8",
            ParseError::NotJson(_) | ParseError::NotObject => "body_not_json",
            ParseError::Missing(_) | ParseError::TopicMissing(_) | ParseError::Invalid { .. } => {
                "envelope_invalid"
            }
            ParseError::Payload { .. } => "payload_invalid",
        }
    }
}

/// A topic is `resource.action`, e.g. `enrollment.progress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub resource: String,
    pub action: String,
}

impl Topic {
    /// A topic in its one spelling (see [`canonical_action`]).
    /// enrollhook's own alerts (`enrollhook.subscription.failing`) are the
    /// one resource whose actions have dots.
    pub fn parse(s: &str) -> Option<Topic> {
        let (resource, action) = s.split_once('.')?;
        let action_ok = if resource == OWN_RESOURCE {
            action.split('.').all(valid_word)
        } else {
            valid_word(action)
        };
        (valid_word(resource) && action_ok).then(|| Topic {
            resource: resource.to_owned(),
            action: canonical_action(action).to_owned(),
        })
    }
}

/// The resource of the events enrollhook writes itself (alerts). Reserved:
/// a delivery naming it is refused (see [`parse_delivery`]), so nobody can
/// forge an alert through a webhook.
pub const OWN_RESOURCE: &str = "enrollhook";

/// The spelling of "cancelled" every topic is stored, matched and queried in.
/// Thinkific lists the topic as `subscription.cancelled`, while the sample of
/// that webhook says `"action": "canceled"`: both mean one topic. The listed
/// spelling wins, since it is the one registrations use.
pub const CANCELLED: &str = "cancelled";

/// An action in its one spelling: `canceled` (any case) is `cancelled`.
pub fn canonical_action(action: &str) -> &str {
    if action.eq_ignore_ascii_case("canceled") {
        CANCELLED
    } else {
        action
    }
}

/// A topic (or topic pattern) in its one spelling: `x.canceled` is
/// `x.cancelled`; anything else is returned as it is, without allocating.
pub fn canonical_topic(topic: &str) -> std::borrow::Cow<'_, str> {
    match topic.split_once('.') {
        Some((resource, action)) if canonical_action(action) != action => {
            std::borrow::Cow::Owned(format!("{resource}.{CANCELLED}"))
        }
        _ => std::borrow::Cow::Borrowed(topic),
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.resource, self.action)
    }
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The enrollment topics that feed the projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EnrollmentTopic {
    Created,
    Progress,
    Completed,
    Trial,
    /// Ours, not Thinkific's: an enrollment as the REST API listed it, stored by
    /// `enrollhook thinkific backfill` (see [`BACKFILL_TOPIC`]). Its payload is
    /// the REST enrollment, read with the REST API's conventions.
    Backfill,
}

/// The topic of events written by the backfill (never sent by Thinkific).
pub const BACKFILL_TOPIC: &str = "enrollment.backfill";

impl EnrollmentTopic {
    pub fn from_topic(topic: &Topic) -> Option<Self> {
        if topic.resource != "enrollment" {
            return None;
        }
        Some(match topic.action.as_str() {
            "created" => Self::Created,
            "progress" => Self::Progress,
            "completed" => Self::Completed,
            "trial" => Self::Trial,
            "backfill" => Self::Backfill,
            _ => return None,
        })
    }
}

/// A parsed delivery. The raw body is kept alongside by the caller: it is what
/// is stored and forwarded, byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Thinkific's event id: unique per event, stable across redeliveries.
    pub id: String,
    pub topic: Topic,
    pub tenant_id: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// The course the payload names, whatever the topic (see [`course_id_of_body`]).
    pub course_id: Option<i64>,
    /// Present when the topic is an enrollment topic.
    pub enrollment: Option<EnrollmentPayload>,
}

impl Envelope {
    pub fn enrollment_topic(&self) -> Option<EnrollmentTopic> {
        EnrollmentTopic::from_topic(&self.topic)
    }
}

/// The enrollment payload, normalised: progress on a 0–100 scale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnrollmentPayload {
    pub id: i64,
    pub course_id: Option<i64>,
    pub course_name: Option<String>,
    pub user_id: Option<i64>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// 0–100.
    pub percentage_completed: Option<f64>,
    /// How `percentage_completed` was read (None when there was none).
    pub percentage_reading: Option<PercentageReading>,
    pub free_trial: Option<bool>,
    /// The REST API's `completed` (webhooks do not send it).
    pub completed: Option<bool>,
    pub activated_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Longest envelope id we accept; Thinkific's are 23 digits.
const MAX_ID_LEN: usize = 128;

// The fields we read, located in one pass over the body but not interpreted
// yet: everything else (most of a payload) is only checked to be JSON, never
// built into maps. A JSON `null` reads as absent, as Thinkific means it.

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    tenant_id: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawPayload<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    course_id: Option<&'a RawValue>,
    #[serde(borrow)]
    course: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    percentage_completed: Option<&'a RawValue>,
    #[serde(borrow)]
    free_trial: Option<&'a RawValue>,
    #[serde(borrow)]
    activated_at: Option<&'a RawValue>,
    #[serde(borrow)]
    started_at: Option<&'a RawValue>,
    #[serde(borrow)]
    completed_at: Option<&'a RawValue>,
    #[serde(borrow)]
    expiry_date: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow)]
    updated_at: Option<&'a RawValue>,
    // The REST API's flat enrollment fields (read for `enrollment.backfill` only).
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_email: Option<&'a RawValue>,
    #[serde(borrow)]
    user_name: Option<&'a RawValue>,
    #[serde(borrow)]
    course_name: Option<&'a RawValue>,
    #[serde(borrow)]
    is_free_trial: Option<&'a RawValue>,
    #[serde(borrow)]
    completed: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawCourse<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawUser<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    email: Option<&'a RawValue>,
    #[serde(borrow)]
    first_name: Option<&'a RawValue>,
    #[serde(borrow)]
    last_name: Option<&'a RawValue>,
}

/// A located field as a value (cheap: the fields read this way are scalars).
fn value(raw: Option<&RawValue>) -> Option<Value> {
    raw.map(|r| {
        // Only nesting deeper than serde_json's recursion limit fails here (the
        // raw value was checked to be JSON): an array or object, which no
        // field read this way accepts.
        serde_json::from_str(r.get()).unwrap_or(Value::Array(Vec::new()))
    })
}

/// `Some` when `raw` is a JSON object: its fields of interest, or why not.
fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<Result<T, serde_json::Error>> {
    raw.get()
        .starts_with('{')
        .then(|| serde_json::from_str(raw.get()))
}

/// Parses a delivery as received: the topic comes from the signed body alone.
/// A body without `resource`/`action` is refused ([`ParseError::TopicMissing`]);
/// the unsigned `X-Thinkific-Topic` header is only compared with it by the caller
/// (see `receive::check`), never used.
pub fn parse_delivery(body: &[u8]) -> Result<Envelope, ParseError> {
    let envelope = parse(body, None).map_err(|e| match e {
        ParseError::Missing(field @ ("resource" | "action")) => ParseError::TopicMissing(field),
        other => other,
    })?;
    if envelope.topic.resource == OWN_RESOURCE {
        return Err(ParseError::Invalid {
            field: "resource",
            why: format!(
                "`{OWN_RESOURCE}` is reserved for enrollhook's own alerts; a webhook cannot deliver them"
            ),
        });
    }
    Ok(envelope)
}

/// Parses a body whose topic is already known: `known_topic` fills a missing
/// `resource`/`action`. For the event log (the row's topic: old rows stored
/// before [`parse_delivery`] may have taken it from the header) and for
/// bodies we build ourselves; never pass an unsigned request header here.
pub fn parse(body: &[u8], known_topic: Option<&str>) -> Result<Envelope, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    let text = std::str::from_utf8(body).map_err(|e| ParseError::NotUtf8(e.valid_up_to()))?;
    let raw: RawEnvelope = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?
    } else {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => ParseError::NotObject,
            Err(e) => ParseError::NotJson(e.to_string()),
        });
    };

    let id = match value(raw.id) {
        None => return Err(ParseError::Missing("id")),
        Some(v) => lenient_string(&v).ok_or_else(|| ParseError::Invalid {
            field: "id",
            why: "expected a string or a number".into(),
        })?,
    };
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(ParseError::Invalid {
            field: "id",
            why: format!("must be 1 to {MAX_ID_LEN} printable characters"),
        });
    }

    let topic = envelope_topic(&raw, known_topic)?;

    let tenant_id = match value(raw.tenant_id) {
        None => None,
        Some(v) => Some(lenient_string(&v).ok_or_else(|| ParseError::Invalid {
            field: "tenant_id",
            why: "expected a string or a number".into(),
        })?),
    };

    let created_at = match value(raw.created_at) {
        None => None,
        Some(v) => Some(timestamp(&v).map_err(|why| ParseError::Invalid {
            field: "created_at",
            why,
        })?),
    };

    let payload = raw.payload.ok_or(ParseError::Missing("payload"))?;
    let payload: Option<RawPayload> = match object(payload) {
        None => {
            return Err(ParseError::Invalid {
                field: "payload",
                why: "expected a JSON object".into(),
            });
        }
        // Any object will do for a topic we do not type (say, the same field
        // twice); an enrollment payload must be readable.
        Some(Err(e)) if EnrollmentTopic::from_topic(&topic).is_some() => {
            return Err(ParseError::Payload {
                field: "payload".into(),
                why: e.to_string(),
            });
        }
        Some(read) => read.ok(),
    };

    let enrollment = match (EnrollmentTopic::from_topic(&topic), &payload) {
        (Some(EnrollmentTopic::Backfill), Some(p)) => Some(parse_rest_enrollment(p)?),
        (Some(_), Some(p)) => Some(parse_enrollment(p)?),
        _ => None,
    };

    Ok(Envelope {
        id,
        topic,
        tenant_id,
        created_at,
        // An enrollment payload has read its course already (strictly).
        course_id: match &enrollment {
            Some(p) => p.course_id,
            None => payload.as_ref().and_then(course_id_of),
        },
        enrollment,
    })
}

fn envelope_topic(raw: &RawEnvelope, header_topic: Option<&str>) -> Result<Topic, ParseError> {
    let field =
        |name: &'static str, raw: Option<&RawValue>| -> Result<Option<String>, ParseError> {
            match value(raw) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(ParseError::Invalid {
                    field: name,
                    why: "expected a string".into(),
                }),
            }
        };
    let from_header = header_topic.and_then(|h| Topic::parse(h.trim()));
    let resource = match (field("resource", raw.resource)?, &from_header) {
        (Some(r), _) => r,
        (None, Some(t)) => t.resource.clone(),
        (None, None) => return Err(ParseError::Missing("resource")),
    };
    let action = match (field("action", raw.action)?, &from_header) {
        (Some(a), _) => a,
        (None, Some(t)) => t.action.clone(),
        (None, None) => return Err(ParseError::Missing("action")),
    };
    let joined = format!("{resource}.{action}");
    Topic::parse(&joined).ok_or_else(|| ParseError::Invalid {
        field: "resource",
        why: format!("topic `{joined}` is not of the form resource.action in lower case"),
    })
}

fn invalid(field: &str, why: &str) -> ParseError {
    ParseError::Payload {
        field: field.to_owned(),
        why: why.to_owned(),
    }
}

fn opt_i64(name: &str, raw: Option<&RawValue>) -> Result<Option<i64>, ParseError> {
    match value(raw) {
        None => Ok(None),
        Some(v) => lenient_i64(&v)
            .map(Some)
            .ok_or_else(|| invalid(name, "expected an integer")),
    }
}

fn opt_str(name: &str, raw: Option<&RawValue>) -> Result<Option<String>, ParseError> {
    match value(raw) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(name, "expected a string")),
    }
}

fn opt_time(name: &str, raw: Option<&RawValue>) -> Result<Option<DateTime<Utc>>, ParseError> {
    match value(raw) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(v) => timestamp(&v).map(Some).map_err(|why| invalid(name, &why)),
    }
}

fn opt_bool(name: &str, raw: Option<&RawValue>) -> Result<Option<bool>, ParseError> {
    match value(raw) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
        Some(_) => Err(invalid(name, "expected true or false")),
    }
}

fn enrollment_id(p: &RawPayload) -> Result<i64, ParseError> {
    match value(p.id) {
        None => Err(invalid("id", "an enrollment payload needs its id")),
        Some(v) => lenient_i64(&v).ok_or_else(|| invalid("id", "expected an integer")),
    }
}

fn parse_enrollment(p: &RawPayload) -> Result<EnrollmentPayload, ParseError> {
    let id = enrollment_id(p)?;
    fn nested<'a, T: Deserialize<'a>>(
        name: &str,
        raw: Option<&'a RawValue>,
    ) -> Result<Option<T>, ParseError> {
        let invalid = |why: String| ParseError::Payload {
            field: name.to_owned(),
            why,
        };
        match raw.map(object) {
            None => Ok(None),
            Some(Some(read)) => read.map(Some).map_err(|e| invalid(e.to_string())),
            Some(None) => Err(invalid("expected an object".into())),
        }
    }

    let course: Option<RawCourse> = nested("course", p.course)?;
    let user: Option<RawUser> = nested("user", p.user)?;
    let course_id = match opt_i64("course_id", p.course_id)? {
        Some(id) => Some(id),
        None => opt_i64("course.id", course.as_ref().and_then(|c| c.id))?,
    };
    // Never a reason to refuse a delivery: an unreadable value is not projected.
    let (percentage_completed, percentage_reading) = match value(p.percentage_completed) {
        None => (None, None),
        Some(v) => {
            let (pct, reading) = webhook_percentage(&v);
            (pct, Some(reading))
        }
    };

    Ok(EnrollmentPayload {
        id,
        course_id,
        course_name: opt_str("course.name", course.as_ref().and_then(|c| c.name))?,
        user_id: opt_i64("user.id", user.as_ref().and_then(|u| u.id))?,
        email: opt_str("user.email", user.as_ref().and_then(|u| u.email))?,
        first_name: opt_str("user.first_name", user.as_ref().and_then(|u| u.first_name))?,
        last_name: opt_str("user.last_name", user.as_ref().and_then(|u| u.last_name))?,
        percentage_completed,
        percentage_reading,
        free_trial: opt_bool("free_trial", p.free_trial)?,
        completed: None,
        activated_at: opt_time("activated_at", p.activated_at)?,
        started_at: opt_time("started_at", p.started_at)?,
        completed_at: opt_time("completed_at", p.completed_at)?,
        expiry_date: opt_time("expiry_date", p.expiry_date)?,
        created_at: opt_time("created_at", p.created_at)?,
        updated_at: opt_time("updated_at", p.updated_at)?,
    })
}

/// An enrollment as Thinkific's REST API (`GET /api/public/v1/enrollments`)
/// lists it: flat `user_id`, `user_email`, `user_name`, `course_id`,
/// `course_name`, `is_free_trial`, `completed`, and `percentage_completed` as a
/// fraction 0.0–1.0 (a number, or a number in a string).
fn parse_rest_enrollment(p: &RawPayload) -> Result<EnrollmentPayload, ParseError> {
    let percentage_completed = match value(p.percentage_completed) {
        None => None,
        Some(v) => Some(rest_percentage(&v).map_err(|why| invalid("percentage_completed", &why))?),
    };
    let (first_name, last_name) = match opt_str("user_name", p.user_name)? {
        Some(name) => split_full_name(&name),
        None => (None, None),
    };
    Ok(EnrollmentPayload {
        id: enrollment_id(p)?,
        course_id: opt_i64("course_id", p.course_id)?,
        course_name: opt_str("course_name", p.course_name)?,
        user_id: opt_i64("user_id", p.user_id)?,
        email: opt_str("user_email", p.user_email)?,
        first_name,
        last_name,
        percentage_reading: percentage_completed.map(|_| PercentageReading::Fraction),
        percentage_completed,
        free_trial: opt_bool("is_free_trial", p.is_free_trial)?,
        completed: opt_bool("completed", p.completed)?,
        activated_at: opt_time("activated_at", p.activated_at)?,
        started_at: opt_time("started_at", p.started_at)?,
        completed_at: opt_time("completed_at", p.completed_at)?,
        expiry_date: opt_time("expiry_date", p.expiry_date)?,
        created_at: opt_time("created_at", p.created_at)?,
        updated_at: opt_time("updated_at", p.updated_at)?,
    })
}

/// The REST API gives one `user_name` ("Bob Smith"); webhooks give first and
/// last names. Split at the first space: right for most names, and a webhook
/// newer than the backfill brings the exact ones.
pub fn split_full_name(name: &str) -> (Option<String>, Option<String>) {
    let name = name.trim();
    if name.is_empty() {
        return (None, None);
    }
    match name.split_once(char::is_whitespace) {
        Some((first, last)) => (Some(first.to_owned()), Some(last.trim().to_owned())),
        None => (Some(name.to_owned()), None),
    }
}

/// The course a payload names (`course_id`, or `course.id`), leniently: used
/// to filter forwarding subscriptions by course, whatever the topic.
fn course_id_of(payload: &RawPayload) -> Option<i64> {
    value(payload.course_id)
        .as_ref()
        .and_then(lenient_i64)
        .or_else(|| {
            let course: RawCourse = object(payload.course?)?.ok()?;
            lenient_i64(&value(course.id)?)
        })
}

/// The course a raw body from the event log names (see [`Envelope::course_id`]).
pub fn course_id_of_body(body: &str) -> Option<i64> {
    let raw: RawEnvelope = serde_json::from_str(body).ok()?;
    course_id_of(&object(raw.payload?)?.ok()?)
}

/// A string, or a number written as a string (Thinkific ids come as both).
fn lenient_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn lenient_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// How a `percentage_completed` was read: shown with the event
/// (`progress_reading` in `GET /api/events`), so a surprising progress can be
/// traced to the value and the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PercentageReading {
    /// A webhook's string (`"24.0"`, what Thinkific documents): percent.
    PercentText,
    /// A webhook's number (`24`, or `0.5`): percent, the webhook's scale.
    PercentNumber,
    /// The REST API's number (`0.24`): a fraction of 1.
    Fraction,
    /// Not readable as 0–100 (text, negative, over 100): not projected; the
    /// event is stored all the same, its body as received.
    Ignored,
}

/// A webhook's `percentage_completed`, on a 0–100 scale, and how it was read.
///
/// Webhooks document a percent string (`"24.0"`); numbers have been seen too,
/// on the same scale (`24`: reading it as the REST API's fraction made 2400 %
/// and refused the delivery). A number of at most 1 could be either scale: it
/// is read as percent, the webhook's scale, so `0.5` is 0.5 % and `1` is 1 %
/// (a completion is known from `enrollment.completed` anyway, whatever the
/// number says). Nothing here refuses a delivery: a value that fits no
/// reading is [`PercentageReading::Ignored`].
pub fn webhook_percentage(v: &Value) -> (Option<f64>, PercentageReading) {
    let (pct, reading) = match v {
        Value::String(s) => (
            s.trim().trim_end_matches('%').trim().parse::<f64>().ok(),
            PercentageReading::PercentText,
        ),
        Value::Number(n) => (n.as_f64(), PercentageReading::PercentNumber),
        _ => (None, PercentageReading::Ignored),
    };
    match pct {
        Some(p) if p.is_finite() && (0.0..=100.0).contains(&p) => (Some(p), reading),
        _ => (None, PercentageReading::Ignored),
    }
}

/// The REST API's progress: a fraction 0.0–1.0, as a number or (leniently) a
/// numeric string; becomes 0–100. Unlike a webhook's string, `"0.5"` is 50 %.
pub fn rest_percentage(v: &Value) -> Result<f64, String> {
    let fraction = match v {
        Value::Number(n) => n.as_f64().ok_or("not a finite number")?,
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("`{s}` is not a number"))?,
        _ => return Err("expected a number from 0.0 to 1.0 like 0.24".into()),
    };
    if !fraction.is_finite() || !(0.0..=1.0).contains(&fraction) {
        return Err(format!(
            "{fraction} is outside 0.0–1.0 (the REST API gives a fraction)"
        ));
    }
    // Rounded to a millionth of a percent, so 0.29 is 29, not 28.999999999999996.
    Ok((fraction * 100.0 * 1e6).round() / 1e6)
}

/// RFC 3339 with or without fractional seconds; a timestamp without an offset
/// is taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    // Microseconds are what every backend stores exactly; years 1–9999 (RFC
    // 3339's) are what both can hold (PostgreSQL refuses years before 4713 BC,
    // which SQLite would take): issue #15, item 5.
    parse_timestamp_exact(s)
        .filter(|t| (1..=9999).contains(&t.year()))
        .map(|t| t.trunc_subsecs(6))
}

fn parse_timestamp_exact(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f %z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn timestamp(v: &Value) -> Result<DateTime<Utc>, String> {
    match v {
        Value::String(s) => {
            parse_timestamp(s).ok_or_else(|| format!("`{s}` is not an RFC 3339 timestamp"))
        }
        _ => Err("expected an RFC 3339 timestamp string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thinkific::samples;

    #[test]
    fn parses_the_published_samples() {
        let e = parse(samples::PROGRESS.as_bytes(), None).unwrap();
        assert_eq!(e.id, "20190131192004041953291");
        assert_eq!(e.topic.to_string(), "enrollment.progress");
        assert_eq!(e.tenant_id.as_deref(), Some("59"));
        assert_eq!(e.enrollment_topic(), Some(EnrollmentTopic::Progress));
        let p = e.enrollment.unwrap();
        assert_eq!(p.id, 4);
        assert_eq!(p.course_id, Some(25));
        assert_eq!(p.percentage_completed, Some(24.0));
        assert_eq!(p.email.as_deref(), Some("[TEST] john@doe.com"));
        assert_eq!(
            p.updated_at.unwrap().to_rfc3339(),
            "2014-02-01T00:20:04.019+00:00"
        );

        let c = parse(samples::COMPLETED.as_bytes(), None).unwrap();
        assert_eq!(c.enrollment.unwrap().percentage_completed, Some(100.0));
        let n = parse(samples::CREATED.as_bytes(), None).unwrap();
        assert_eq!(n.enrollment.unwrap().percentage_completed, Some(0.0));
    }

    #[test]
    fn canceled_and_cancelled_are_one_topic() {
        assert_eq!(
            canonical_topic("subscription.canceled"),
            "subscription.cancelled"
        );
        assert_eq!(
            canonical_topic("subscription.CANCELED"),
            "subscription.cancelled"
        );
        assert_eq!(
            canonical_topic("subscription.cancelled"),
            "subscription.cancelled"
        );
        assert!(matches!(
            canonical_topic("order.created"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(canonical_topic("subscription.*"), "subscription.*");
        assert_eq!(
            canonical_topic("canceled"),
            "canceled",
            "not a topic: as it is"
        );
        // The sample's spelling is parsed into the listed one; the body is not touched.
        let body = br#"{"id":"1","resource":"subscription","action":"canceled","payload":{}}"#;
        let e = parse_delivery(body).unwrap();
        assert_eq!(e.topic.to_string(), "subscription.cancelled");
    }

    #[test]
    fn lenient_where_thinkific_is_inconsistent() {
        let body = br#"{"id": 123, "resource": "enrollment", "action": "progress",
            "tenant_id": 59, "created_at": "2024-01-01T10:00:00Z", "tenant_global_id": "x",
            "payload": {"id": "7", "course": {"id": "3", "name": "C"}, "percentage_completed": 0.5,
                        "user": {"id": 1, "email": "not an email"}, "started_at": null,
                        "updated_at": "2024-01-01 10:00:00"}}"#;
        let e = parse(body, None).unwrap();
        assert_eq!(e.id, "123");
        assert_eq!(e.tenant_id.as_deref(), Some("59"));
        let p = e.enrollment.unwrap();
        assert_eq!((p.id, p.course_id), (7, Some(3)));
        // A number in a webhook is percent (see `webhook_percentage`).
        assert_eq!(p.percentage_completed, Some(0.5));
        assert_eq!(p.percentage_reading, Some(PercentageReading::PercentNumber));
        assert_eq!(p.started_at, None);
        assert!(p.updated_at.is_some());
        assert_eq!(e.course_id, Some(3));
    }

    #[test]
    fn unknown_topics_are_accepted_untyped() {
        let body =
            br#"{"id":"1","resource":"order","action":"created","payload":{"anything":[1,2]}}"#;
        let e = parse(body, None).unwrap();
        assert_eq!(e.topic.to_string(), "order.created");
        assert!(e.enrollment.is_none());
        let body = br#"{"id":"1","resource":"brand_new","action":"thing","payload":{}}"#;
        assert!(parse(body, None).is_ok());
    }

    #[test]
    fn a_known_topic_fills_a_missing_resource_for_the_log() {
        let body = br#"{"id":"1","payload":{"id":5}}"#;
        let e = parse(body, Some("enrollment.created")).unwrap();
        assert_eq!(e.enrollment.unwrap().id, 5);
        assert_eq!(parse(body, None), Err(ParseError::Missing("resource")));
    }

    #[test]
    fn a_delivery_takes_its_topic_from_the_body_only() {
        let body = br#"{"id":"1","payload":{"id":5}}"#;
        let e = parse_delivery(body).unwrap_err();
        assert_eq!(e, ParseError::TopicMissing("resource"));
        assert_eq!(e.code(), "envelope_invalid");
        assert!(e.to_string().contains("not signed"), "{e}");
        let body = br#"{"id":"1","resource":"enrollment","payload":{"id":5}}"#;
        assert_eq!(
            parse_delivery(body),
            Err(ParseError::TopicMissing("action"))
        );
        let e = parse_delivery(samples::PROGRESS.as_bytes()).unwrap();
        assert_eq!(e.topic.to_string(), "enrollment.progress");
    }

    #[test]
    fn strict_elsewhere() {
        assert_eq!(parse(b"", None), Err(ParseError::Empty));
        assert_eq!(parse(b"  \n", None), Err(ParseError::Empty));
        assert_eq!(parse(b"{\"a\":\xff}", None), Err(ParseError::NotUtf8(5)));
        assert!(matches!(parse(b"{nope", None), Err(ParseError::NotJson(_))));
        assert_eq!(parse(b"[1]", None), Err(ParseError::NotObject));
        assert_eq!(
            parse(br#"{"resource":"a","action":"b","payload":{}}"#, None),
            Err(ParseError::Missing("id"))
        );
        assert_eq!(
            parse(br#"{"id":"1","resource":"a","action":"b"}"#, None),
            Err(ParseError::Missing("payload"))
        );
        assert!(matches!(
            parse(
                br#"{"id":"1","resource":"Enroll ment","action":"b","payload":{}}"#,
                None
            ),
            Err(ParseError::Invalid {
                field: "resource",
                ..
            })
        ));
        assert!(matches!(
            parse(
                br#"{"id":{},"resource":"a","action":"b","payload":{}}"#,
                None
            ),
            Err(ParseError::Invalid { field: "id", .. })
        ));
        assert!(matches!(
            parse(br#"{"id":"1","resource":"enrollment","action":"progress","payload":{"course_id":1}}"#, None),
            Err(ParseError::Payload { .. })
        ));
        // An unreadable percentage does not refuse the delivery; it is left out.
        let odd = parse(br#"{"id":"1","resource":"enrollment","action":"progress","payload":{"id":1,"percentage_completed":"250"}}"#, None).unwrap();
        let p = odd.enrollment.unwrap();
        assert_eq!(p.percentage_completed, None);
        assert_eq!(p.percentage_reading, Some(PercentageReading::Ignored));
        assert!(matches!(
            parse(
                br#"{"id":"1","created_at":"yesterday","resource":"a","action":"b","payload":{}}"#,
                None
            ),
            Err(ParseError::Invalid {
                field: "created_at",
                ..
            })
        ));
    }

    #[test]
    fn only_the_fields_read_are_interpreted() {
        // A topic we do not type: any payload object will do, even an odd one.
        let body = br#"{"id":"1","resource":"order","action":"created",
            "payload":{"course":"not an object","course_id":null,"x":1,"x":2}}"#;
        let e = parse(body, None).unwrap();
        assert_eq!(e.course_id, None);
        let body = br#"{"id":"1","resource":"order","action":"created",
            "payload":{"course":{"id":"12","name":"C"},"items":[{"id":1}]}}"#;
        assert_eq!(parse(body, None).unwrap().course_id, Some(12));
        assert_eq!(
            course_id_of_body(std::str::from_utf8(body).unwrap()),
            Some(12)
        );
        // An enrollment payload's nested objects must be objects.
        assert!(matches!(
            parse(br#"{"id":"1","resource":"enrollment","action":"created","payload":{"id":1,"user":"u"}}"#, None),
            Err(ParseError::Payload { field, .. }) if field == "user"
        ));
        // A payload that is not an object, and JSON null for a required field.
        assert!(matches!(
            parse(
                br#"{"id":"1","resource":"a","action":"b","payload":[1]}"#,
                None
            ),
            Err(ParseError::Invalid {
                field: "payload",
                ..
            })
        ));
        assert_eq!(
            parse(
                br#"{"id":null,"resource":"a","action":"b","payload":{}}"#,
                None
            ),
            Err(ParseError::Missing("id"))
        );
        // The same envelope field twice is ambiguous (which id is the event's?):
        // refused, saying which.
        let twice = parse(
            br#"{"id":"1","id":"2","resource":"a","action":"b","payload":{}}"#,
            None,
        );
        assert!(
            matches!(twice, Err(ParseError::NotJson(ref m)) if m.contains("duplicate field `id`"))
        );
        // Deeper than serde_json's recursion limit: refused, not a panic.
        let deep = format!(
            r#"{{"id":{}1{},"resource":"a","action":"b","payload":{{}}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        assert!(parse(deep.as_bytes(), None).is_err());
        // Strings with escapes are read as JSON strings.
        let body = br#"{"id":"1","resource":"enrollment","action":"created",
            "payload":{"id":1,"user":{"email":"a\u0040b.c","first_name":"Zo\u00eb"}}}"#;
        let p = parse(body, None).unwrap().enrollment.unwrap();
        assert_eq!(p.email.as_deref(), Some("a@b.c"));
        assert_eq!(p.first_name.as_deref(), Some("Zoë"));
    }

    #[test]
    fn webhook_percentages_are_percent_and_never_refused() {
        use PercentageReading::*;
        use serde_json::json;
        let read = |v: Value| webhook_percentage(&v);
        assert_eq!(read(json!("0")), (Some(0.0), PercentText));
        assert_eq!(read(json!("24.0")), (Some(24.0), PercentText));
        assert_eq!(read(json!(" 24 % ")), (Some(24.0), PercentText));
        assert_eq!(read(json!("100.0")), (Some(100.0), PercentText));
        // A number is on the webhook's scale: 24 is 24 %, not 2400 %.
        assert_eq!(read(json!(24)), (Some(24.0), PercentNumber));
        assert_eq!(read(json!(24.5)), (Some(24.5), PercentNumber));
        assert_eq!(read(json!(100)), (Some(100.0), PercentNumber));
        // At most 1: either scale would do; the webhook's (percent) is taken.
        assert_eq!(read(json!(0.5)), (Some(0.5), PercentNumber));
        assert_eq!(read(json!(1)), (Some(1.0), PercentNumber));
        // What fits no reading is left out, never refused.
        for v in [
            json!("NaN"),
            json!("abc"),
            json!(-0.1),
            json!(250),
            json!("250"),
            json!(true),
            json!([]),
        ] {
            assert_eq!(read(v.clone()), (None, Ignored), "{v}");
        }
    }

    #[test]
    fn rest_percentages_are_fractions() {
        use serde_json::json;
        assert_eq!(rest_percentage(&json!(0.24)), Ok(24.0));
        assert_eq!(rest_percentage(&json!(0.29)), Ok(29.0));
        assert_eq!(rest_percentage(&json!(1)), Ok(100.0));
        assert_eq!(rest_percentage(&json!("0.5")), Ok(50.0));
        assert!(rest_percentage(&json!(24)).is_err());
    }

    #[test]
    fn timestamps_with_and_without_fractions() {
        for s in [
            "2014-02-01T00:20:04.019Z",
            "2014-02-01T00:20:04Z",
            "2014-02-01T01:20:04+01:00",
            "2014-02-01T00:20:04",
            "2014-02-01 00:20:04 +0000",
        ] {
            let t = parse_timestamp(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(
                t.format("%Y-%m-%dT%H:%M:%S").to_string(),
                "2014-02-01T00:20:04"
            );
        }
        assert!(parse_timestamp("01/02/2014").is_none());
    }
}

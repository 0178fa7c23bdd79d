//! Templated deliveries: what a subscription sends, shaped from the event and
//! its enrollment by a MiniJinja template (no I/O, bounded), or by a preset
//! for Slack, Discord, Microsoft Teams or a flat generic JSON.
//!
//! Escaping is by where a value lands, so a student's name can never break
//! the message or inject into it:
//! - the **body** of a JSON request (the default) prints every `{{ value }}` as
//!   JSON (`{"email": {{ event.payload.user.email }}}` is valid JSON whatever
//!   the e-mail holds);
//! - the **URL** percent-encodes printed values;
//! - the preset **message** escapes for its chat (`<`, `>`, `&` for Slack, so a
//!   name like `<!channel>` cannot ping a channel; Discord deliveries allow no
//!   mentions at all);
//! - **headers** are printed as they are and refused if they hold a line break.
//!
//! A template that fails to render gives an error and nothing to send (the
//! worker dead-letters that one delivery): never a half-rendered body.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Serde, Value as JinjaValue};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The largest rendered body, URL or header (bytes).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// The largest template text accepted (each of body, message, URL, header).
pub const MAX_TEMPLATE_BYTES: usize = 32 * 1024;
/// Instructions one render may run (loops over a payload's arrays fit easily;
/// a runaway loop stops here instead of holding the worker).
pub const FUEL: u64 = 100_000;

/// Ready-made shapes for common receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// A Slack incoming webhook: `text` plus a section block (mrkdwn).
    Slack,
    /// A Discord webhook: `content` plus an embed, mentions disabled.
    Discord,
    /// A Microsoft Teams workflow ("When a Teams webhook request is received"):
    /// a message with one Adaptive Card.
    Teams,
    /// A flat JSON document of the event and its enrollment (documented fields).
    Json,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Slack, Preset::Discord, Preset::Teams, Preset::Json];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Slack => "slack",
            Preset::Discord => "discord",
            Preset::Teams => "teams",
            Preset::Json => "json",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Preset::Slack => SLACK_BODY,
            Preset::Discord => DISCORD_BODY,
            Preset::Teams => TEAMS_BODY,
            Preset::Json => JSON_BODY,
        }
    }

    /// How the preset's message escapes printed values.
    fn message_escape(self) -> &'static str {
        match self {
            Preset::Slack => "message.slack",
            Preset::Discord | Preset::Teams | Preset::Json => "message.txt",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a subscription sends, as its owner wrote it. Every field is optional:
/// a preset alone is enough; without a preset, `body` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub preset: Option<Preset>,
    /// POST (default), PUT or PATCH.
    pub method: Option<String>,
    /// The URL, with placeholders (`https://crm.example/contacts/{{ student.email }}`);
    /// default: the subscription's URL.
    pub url: Option<String>,
    /// Extra headers, each value a template.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body template; overrides the preset's.
    pub body: Option<String>,
    /// The sentence a preset shows (a template); default: one per topic.
    pub message: Option<String>,
    /// Default `application/json` (the body is then checked to be JSON).
    pub content_type: Option<String>,
}

/// A template that does not compile or does not make sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template {part}: {reason}")]
pub struct TemplateError {
    /// `body`, `url`, `message`, `method`, `headers.X-Name`…
    pub part: String,
    pub reason: String,
}

/// What to send for one event.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rendered {
    pub method: String,
    /// None: the subscription's URL.
    pub url: Option<String>,
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    #[serde(serialize_with = "as_text")]
    #[schema(value_type = String)]
    pub body: Vec<u8>,
}

fn as_text<S: serde::Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

/// What a template sees: the event as Thinkific sent it and, when the event
/// belongs to an enrollment, the enrollment as the API shows it.
#[derive(Debug, Clone)]
pub struct RenderInput<'a> {
    pub source: &'a str,
    pub topic: &'a str,
    /// The envelope (`id`, `resource`, `action`, `created_at`, `payload`…).
    pub event: &'a Value,
    /// `EnrollmentView` as JSON, if any.
    pub enrollment: Option<&'a Value>,
}

/// What a template sees for one event, made once and shared by every
/// subscription rendering it (making it was nearly half of a render); the
/// envelope and the enrollment in it are read as templates ask ([`Json`]).
#[derive(Debug, Clone)]
pub struct Prepared(BTreeMap<JinjaValue, JinjaValue>);

impl Prepared {
    pub fn new(input: &RenderInput<'_>) -> Prepared {
        Prepared::owned(
            input.source,
            input.topic,
            input.event.clone(),
            input.enrollment.cloned(),
        )
    }

    /// [`Prepared::new`] from values the caller no longer needs (no copy).
    pub fn owned(source: &str, topic: &str, event: Value, enrollment: Option<Value>) -> Prepared {
        Prepared(context(
            source,
            topic,
            Arc::new(event),
            Arc::new(enrollment.unwrap_or(Value::Null)),
        ))
    }
}

/// A JSON object or array as templates see it: a field is converted to a
/// template value when a template reads it, not the whole document up front
/// (a preset reads a dozen of a delivery's hundred-odd values; converting
/// them all was most of preparing an event). Holds the document and the way
/// from its root to this node.
#[derive(Debug)]
struct Json {
    root: Arc<Value>,
    path: Vec<Step>,
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

impl Json {
    /// `value` (found at `path` in `root`) as a template value.
    fn value(root: &Arc<Value>, path: Vec<Step>, value: &Value) -> JinjaValue {
        match value {
            Value::Object(_) | Value::Array(_) => JinjaValue::from_object(Json {
                root: root.clone(),
                path,
            }),
            // As `Serde` converts them: u64, then i64, then f64.
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => JinjaValue::from(u),
                (None, Some(i)) => JinjaValue::from(i),
                _ => JinjaValue::from(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(text) => JinjaValue::from(text.as_str()),
            Value::Bool(b) => JinjaValue::from(*b),
            Value::Null => JinjaValue::from(()),
        }
    }

    fn root(root: Arc<Value>) -> JinjaValue {
        Json::value(&root, Vec::new(), &root)
    }

    fn node(&self) -> &Value {
        self.path.iter().fold(&*self.root, |node, step| match step {
            Step::Key(k) => &node[k.as_str()],
            Step::Index(i) => &node[*i],
        })
    }

    fn child(&self, step: Step, value: &Value) -> JinjaValue {
        let mut path = Vec::with_capacity(self.path.len() + 1);
        path.extend_from_slice(&self.path);
        path.push(step);
        Json::value(&self.root, path, value)
    }
}

impl Object for Json {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        match self.node() {
            Value::Object(map) => {
                let key = key.as_str()?;
                let value = map.get(key)?;
                Some(self.child(Step::Key(key.to_owned()), value))
            }
            Value::Array(items) => {
                let i = key.as_usize()?;
                Some(self.child(Step::Index(i), items.get(i)?))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            Value::Object(map) => {
                Enumerator::Values(map.keys().map(|k| JinjaValue::from(k.as_str())).collect())
            }
            Value::Array(items) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            Value::Object(map) => Some(map.len()),
            Value::Array(items) => Some(items.len()),
            _ => Some(0),
        }
    }
}

/// A subscription's template, compiled once and rendered per event.
pub struct Shaper {
    env: Environment<'static>,
    method: String,
    content_type: String,
    has_url: bool,
    header_names: Vec<String>,
    preset: Option<Preset>,
}

impl fmt::Debug for Shaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shaper")
            .field("method", &self.method)
            .field("preset", &self.preset)
            .finish_non_exhaustive()
    }
}

const JSON: &str = "application/json";

impl Shaper {
    /// Compile a spec; every error names the part and, for syntax, the line.
    pub fn new(spec: &TemplateSpec) -> Result<Shaper, TemplateError> {
        let bad = |part: &str, reason: String| TemplateError {
            part: part.to_string(),
            reason,
        };
        let method = spec
            .method
            .as_deref()
            .unwrap_or("POST")
            .to_ascii_uppercase();
        if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            return Err(bad(
                "method",
                format!("{method} is not one of POST, PUT, PATCH"),
            ));
        }
        let content_type = spec
            .content_type
            .clone()
            .unwrap_or_else(|| JSON.to_string());
        if content_type.contains(['\r', '\n']) {
            return Err(bad("content_type", "holds a line break".into()));
        }
        let json_body = is_json(&content_type);
        let body = match (&spec.body, spec.preset) {
            (Some(body), _) => body.clone(),
            (None, Some(preset)) if json_body => preset.body().to_string(),
            (None, Some(preset)) => {
                return Err(bad(
                    "content_type",
                    format!("the {preset} preset sends JSON; set a body to send {content_type}"),
                ));
            }
            (None, None) => {
                return Err(bad("body", "a template needs a preset or a body".into()));
            }
        };

        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_auto_escape_callback(|name| match name.rsplit('.').next() {
            Some("json") => AutoEscape::Json,
            Some("url") => AutoEscape::Custom("url".into()),
            Some("slack") => AutoEscape::Custom("slack".into()),
            _ => AutoEscape::None,
        });
        // At most `n` characters, the last one `…` when cut (Discord's limits
        // are in characters).
        env.add_filter("truncate", |s: String, n: usize| -> String {
            if s.chars().count() <= n {
                s
            } else {
                let mut cut: String = s.chars().take(n.saturating_sub(1)).collect();
                cut.push('…');
                cut
            }
        });
        env.set_formatter(|out, state, value| match state.auto_escape() {
            AutoEscape::Custom(kind) => {
                let text = printable(value);
                let escaped = match kind.as_ref() {
                    "url" => url::form_urlencoded::byte_serialize(text.as_bytes()).collect(),
                    _ => slack_escape(&text),
                };
                out.write_str(&escaped).map_err(minijinja::Error::from)
            }
            _ => minijinja::escape_formatter(out, state, value),
        });

        let mut add = |name: String, part: &str, source: String| {
            if source.len() > MAX_TEMPLATE_BYTES {
                return Err(bad(
                    part,
                    format!("is {} bytes, more than {MAX_TEMPLATE_BYTES}", source.len()),
                ));
            }
            env.add_template_owned(name, source)
                .map_err(|e| bad(part, describe(&e)))
        };
        add(
            if json_body { "body.json" } else { "body.txt" }.into(),
            "body",
            body,
        )?;
        let message_name = spec.preset.map_or("message.txt", Preset::message_escape);
        add(
            message_name.into(),
            "message",
            spec.message.clone().unwrap_or_else(|| MESSAGE.to_string()),
        )?;
        if let Some(url) = &spec.url {
            add("target.url".into(), "url", url.clone())?;
        }
        let mut header_names = Vec::new();
        for (name, value) in &spec.headers {
            let part = format!("headers.{name}");
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad(&part, "is not a valid header name".into()));
            }
            add(
                format!("header.{}", header_names.len()),
                &part,
                value.clone(),
            )?;
            header_names.push(name.clone());
        }
        Ok(Shaper {
            env,
            method,
            content_type,
            has_url: spec.url.is_some(),
            header_names,
            preset: spec.preset,
        })
    }

    /// Render what to send for one event, or why nothing can be sent.
    pub fn render(&self, input: &RenderInput<'_>) -> Result<Rendered, TemplateError> {
        self.render_prepared(&Prepared::new(input))
    }

    /// [`Shaper::render`] with the event's template values made beforehand.
    pub fn render_prepared(&self, prepared: &Prepared) -> Result<Rendered, TemplateError> {
        let mut ctx = prepared.0.clone();
        let message_name = self.preset.map_or("message.txt", Preset::message_escape);
        let message = self.render_part(
            message_name,
            "message",
            &JinjaValue::from_object(ctx.clone()),
        )?;
        ctx.insert(
            "message".into(),
            String::from_utf8_lossy(&message).trim().into(),
        );
        let ctx = JinjaValue::from_object(ctx);

        let body_name = if is_json(&self.content_type) {
            "body.json"
        } else {
            "body.txt"
        };
        let body = self.render_part(body_name, "body", &ctx)?;
        if is_json(&self.content_type) {
            serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| TemplateError {
                part: "body".into(),
                reason: format!("did not render valid JSON ({e}); print values with {{{{ … }}}} and let the template quote them"),
            })?;
        }
        let url = if self.has_url {
            let url = text(self.render_part("target.url", "url", &ctx)?, "url")?;
            Some(url.trim().to_string())
        } else {
            None
        };
        let mut headers = Vec::with_capacity(self.header_names.len());
        for (i, name) in self.header_names.iter().enumerate() {
            let part = format!("headers.{name}");
            let value = text(
                self.render_part(&format!("header.{i}"), &part, &ctx)?,
                &part,
            )?;
            if value.contains(['\r', '\n']) {
                return Err(TemplateError {
                    part,
                    reason: "rendered a line break".into(),
                });
            }
            headers.push((name.clone(), value));
        }
        Ok(Rendered {
            method: self.method.clone(),
            url,
            headers,
            content_type: self.content_type.clone(),
            body,
        })
    }

    fn render_part(
        &self,
        name: &str,
        part: &str,
        ctx: &JinjaValue,
    ) -> Result<Vec<u8>, TemplateError> {
        let template = self.env.get_template(name).map_err(|e| TemplateError {
            part: part.into(),
            reason: describe(&e),
        })?;
        let mut out = Bounded(Vec::new());
        template
            .render_captured_to(ctx.clone(), &mut out)
            .map_err(|e| TemplateError {
                part: part.into(),
                reason: describe(&e),
            })?;
        Ok(out.0)
    }
}

impl Preset {
    /// The preset's body template, to show and to copy.
    pub fn body_template(self) -> &'static str {
        self.body()
    }
}

/// The default message template (per topic), to show and to copy.
pub fn default_message_template() -> &'static str {
    MESSAGE
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(JSON) || essence.to_ascii_lowercase().ends_with("+json")
}

fn text(bytes: Vec<u8>, part: &str) -> Result<String, TemplateError> {
    String::from_utf8(bytes).map_err(|_| TemplateError {
        part: part.into(),
        reason: "rendered bytes that are not UTF-8".into(),
    })
}

/// One line saying what went wrong, with the template line when known.
fn describe(e: &minijinja::Error) -> String {
    let what = match e.kind() {
        ErrorKind::OutOfFuel => format!("ran more than {FUEL} steps (a loop too long?)"),
        ErrorKind::WriteFailure => format!("rendered more than {MAX_OUTPUT_BYTES} bytes"),
        _ => e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_string),
    };
    match e.line() {
        Some(line) => format!("line {line}: {what}"),
        None => what,
    }
}

/// The template's output, refused past [`MAX_OUTPUT_BYTES`] so a runaway
/// template stops instead of filling memory.
struct Bounded(Vec<u8>);

impl io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            return Err(io::Error::other(format!(
                "rendered more than {MAX_OUTPUT_BYTES} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn printable(value: &JinjaValue) -> String {
    if value.is_undefined() || value.is_none() {
        String::new()
    } else {
        value.to_string()
    }
}

/// Slack's three control characters (its docs: "escape &, <, >").
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The variables a template sees. `student` and `course` are taken from the
/// enrollment when there is one, else from the payload, so every topic has them.
/// Made once per event and shared by every subscription rendering it; the
/// event and the enrollment are read by the templates as they are ([`Json`]).
fn context(
    source: &str,
    topic: &str,
    event: Arc<Value>,
    enrollment: Arc<Value>,
) -> BTreeMap<JinjaValue, JinjaValue> {
    let payload = event.get("payload").unwrap_or(&Value::Null);
    let user = payload
        .get("user")
        .filter(|u| u.is_object())
        .unwrap_or(payload);
    let pick = |from_enrollment: &str, from_payload: Option<&Value>| -> Value {
        enrollment
            .get(from_enrollment)
            .filter(|v| !v.is_null())
            .or(from_payload.filter(|v| !v.is_null()))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let first = pick("first_name", user.get("first_name"));
    let last = pick("last_name", user.get("last_name"));
    let name = [&first, &last]
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|s| !s.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let course = payload.get("course");
    let progress = enrollment
        .get("progress")
        .and_then(Value::as_f64)
        .or_else(|| payload_progress(payload.get("percentage_completed")));
    let student = json!({
        "id": pick("user_id", user.get("id")),
        "email": pick("email", user.get("email")),
        "first_name": first,
        "last_name": last,
        "name": if name.is_empty() { Value::Null } else { Value::String(name) },
    });
    let course = json!({
        "id": pick("course_id", course.and_then(|c| c.get("id"))),
        "name": pick("course_name", course.and_then(|c| c.get("name"))),
    });
    let days_to_complete = json!(
        enrollment
            .get("days_to_complete")
            .and_then(Value::as_f64)
            .map(|d| d.round() as i64)
    );
    let has_payload = event.get("payload").is_some();
    let event = Json::root(event);
    let payload = match has_payload {
        true => event.get_attr("payload").unwrap_or_default(),
        false => JinjaValue::from(()),
    };
    let small = |v: Value| JinjaValue::from(Serde(v));
    let mut ctx = BTreeMap::new();
    let mut put = |key: &str, value: JinjaValue| {
        ctx.insert(JinjaValue::from(key), value);
    };
    put("source", source.into());
    put("topic", topic.into());
    put("event", event);
    put("payload", payload);
    put("enrollment", Json::root(enrollment));
    put("student", small(student));
    put("course", small(course));
    put("progress", small(json!(progress.map(percent))));
    put("days_to_complete", small(days_to_complete));
    ctx
}

/// A percentage to show: a whole number when it is one (`24`, not `24.0`),
/// else one decimal.
fn percent(p: f64) -> Value {
    let p = (p * 10.0).round() / 10.0;
    if p.fract() == 0.0 && p.abs() < 1e15 {
        json!(p as i64)
    } else {
        json!(p)
    }
}

/// A payload's percentage as 0–100 for a message: Thinkific's webhooks send a
/// string of percent ("24.0"), its REST API a fraction (0.24).
fn payload_progress(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Number(n) => n.as_f64().map(|f| if f <= 1.0 { f * 100.0 } else { f }),
        _ => None,
    }
    .filter(|p| p.is_finite())
}

/// One sentence per topic, for the chat presets (`{{ message }}`).
const MESSAGE: &str = r#"
{%- set who = student.name or student.email or "A student" -%}
{%- set what = course.name or ("course " ~ course.id if course.id else "a course") -%}
{%- if topic[:11] == "enrollhook." -%}
{{ "✅" if topic[-9:] == "recovered" else "🚨" }} {{ payload.summary }}{% if payload.what_to_do %} {{ payload.what_to_do }}{% endif %}
{%- elif topic in ["enrollment.completed", "milestone.completed"] -%}
🎓 {{ who }} completed {{ what }}{% if days_to_complete is not none %} in {{ days_to_complete }} day{{ "s" if days_to_complete != 1 }}{% endif %}.
{%- elif topic == "enrollment.created" -%}
🆕 {{ who }} enrolled in {{ what }}{% if payload.free_trial %} (free trial){% endif %}.
{%- elif topic == "enrollment.trial" -%}
🧪 {{ who }} started a free trial of {{ what }}.
{%- elif topic in ["enrollment.progress", "milestone.progress"] -%}
📈 {{ who }} is at {{ progress }} % of {{ what }}.
{%- elif topic == "milestone.stalled" -%}
⏸️ {{ who }} has not been active in {{ what }} for a while.
{%- elif topic == "lesson.completed" -%}
✅ {{ who }} completed the lesson {{ payload.lesson.name }} in {{ what }}.
{%- elif topic == "quiz.attempted" -%}
📝 {{ who }} scored {{ payload.grade }} on the quiz {{ payload.quiz.name }}.
{%- elif topic == "order.created" -%}
💳 {{ who }} bought {{ payload.product_name }}{% if payload.amount_dollars is not none %} for ${{ payload.amount_dollars }}{% endif %}.
{%- elif topic == "user.signup" -%}
👋 {{ who }} signed up.
{%- else -%}
{{ topic }}: {{ who }}{% if course.id %}, {{ what }}{% endif %}.
{%- endif -%}
"#;

// Bodies: every `{{ … }}` prints JSON (the body's auto-escaping), so these are
// valid JSON whatever the values hold.

const SLACK_BODY: &str = r#"{"text": {{ message }}, "blocks": [
  {"type": "section", "text": {"type": "mrkdwn", "text": {{ message }}}},
  {"type": "context", "elements": [{"type": "mrkdwn", "text": {{ topic ~ " · " ~ source ~ " · " ~ event.created_at }}}]}
]}"#;

const DISCORD_BODY: &str = r#"{"content": {{ message|truncate(2000) }},
 "allowed_mentions": {"parse": []},
 "embeds": [{"title": {{ topic }}, "fields": [
   {"name": "Student", "value": {{ (student.name or student.email or "unknown")|string|truncate(1024) }}, "inline": true},
   {"name": "Course", "value": {{ (course.name or course.id or "none")|string|truncate(1024) }}, "inline": true}
   {%- if progress is not none %}, {"name": "Progress", "value": {{ progress ~ " %" }}, "inline": true}{% endif %}
 ], "footer": {"text": {{ source }}}, "timestamp": {{ event.created_at }}}]}"#;

const TEAMS_BODY: &str = r#"{"type": "message", "attachments": [{
  "contentType": "application/vnd.microsoft.card.adaptive",
  "contentUrl": null,
  "content": {
    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
    "type": "AdaptiveCard", "version": "1.4",
    "body": [
      {"type": "TextBlock", "text": {{ message }}, "wrap": true, "weight": "Bolder"},
      {"type": "FactSet", "facts": [
        {"title": "Student", "value": {{ (student.name or student.email or "unknown")|string }}},
        {"title": "Course", "value": {{ (course.name or course.id or "none")|string }}},
        {"title": "Event", "value": {{ topic }}}
      ]}
    ]
  }
}]}"#;

const JSON_BODY: &str = r#"{"event_id": {{ event.id }}, "topic": {{ topic }}, "source": {{ source }},
 "occurred_at": {{ event.created_at }},
 "student_id": {{ student.id }}, "email": {{ student.email }},
 "first_name": {{ student.first_name }}, "last_name": {{ student.last_name }},
 "course_id": {{ course.id }}, "course_name": {{ course.name }},
 "enrollment_id": {{ enrollment.enrollment_id if enrollment else none }},
 "status": {{ enrollment.status if enrollment else none }},
 "progress": {{ progress }}, "completed_at": {{ enrollment.completed_at if enrollment else none }},
 "days_to_complete": {{ days_to_complete }}, "message": {{ message }}}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thinkific::samples;

    fn completed_enrollment() -> Value {
        json!({"source": "default", "enrollment_id": 1084282, "status": "completed",
               "progress": 100.0, "course_id": 123, "course_name": "Introduction to Webhooks",
               "user_id": 123456, "email": "john@doe.com", "first_name": "John",
               "last_name": "Doe", "completed_at": "2019-10-29T18:56:29Z",
               "days_to_complete": 12.4})
    }

    /// [`Json`] reads a document lazily; a template must not tell it from the
    /// document converted whole (what `Serde` makes).
    #[test]
    fn a_template_reads_a_document_as_it_would_its_converted_copy() {
        let doc = json!({"id": "7", "payload": {
            "user": {"email": "ann@example.com", "first_name": "Ann"},
            "n": 24, "neg": -3, "big": u64::MAX, "f": 24.5, "s": "24.0",
            "list": [1, {"x": "y"}, null, [2, 3]], "empty": {}, "none": null, "t": true}});
        let lazy = Json::root(Arc::new(doc.clone()));
        let eager = JinjaValue::from(Serde(&doc));
        let env = Environment::new();
        for t in [
            "{{ v }}",
            "{{ v | tojson }}",
            "{{ v.payload | tojson(indent=2) }}",
            "{{ v.payload.list[1].x }}{{ v.payload.list[3][1] }}{{ v.payload.list[9] is undefined }}",
            "{{ v.payload | length }}{{ v.payload.list | length }}{{ v.payload.list | last }}",
            "{% for k, x in v.payload | items %}{{ k }}={{ x }};{% endfor %}",
            "{% for x in v.payload.list %}{{ loop.index }}:{{ x }};{% endfor %}",
            "{{ 'user' in v.payload }}{{ 'nobody' in v.payload }}{{ 1 in v.payload.list }}",
            "{{ v.payload.empty is mapping }}{{ v.payload.empty | tojson }}{{ not v.payload.empty }}",
            "{{ v.payload.list is sequence }}{{ v.payload.user is mapping }}{{ v.payload.none is none }}",
            "{{ v.payload.missing is undefined }}{{ v.payload.missing.deeper is undefined }}",
            "{{ v.payload.f + v.payload.n }}{{ v.payload.neg * 2 }}{{ v.payload.big }}{{ v.payload.t }}",
            "{{ v.payload.user.email | upper }}{{ v.payload.s | float }}",
            "{{ v.payload | dictsort | first }}{{ v.payload.user | list }}",
            "{{ v.payload.user == v.payload.user }}{{ v.payload.list[0] == 1 }}",
        ] {
            let lazily = env.render_str(t, minijinja::context! { v => lazy.clone() });
            let converted = env.render_str(t, minijinja::context! { v => eager.clone() });
            assert_eq!(
                lazily.map_err(|e| e.to_string()),
                converted.map_err(|e| e.to_string()),
                "{t}"
            );
        }
    }

    fn render(spec: TemplateSpec, body: &str, enrollment: Option<&Value>) -> Rendered {
        let event: Value = serde_json::from_str(body).unwrap();
        let topic = format!(
            "{}.{}",
            event["resource"].as_str().unwrap(),
            event["action"].as_str().unwrap()
        );
        Shaper::new(&spec)
            .unwrap()
            .render(&RenderInput {
                source: "default",
                topic: &topic,
                event: &event,
                enrollment,
            })
            .unwrap()
    }

    fn preset(p: Preset) -> TemplateSpec {
        TemplateSpec {
            preset: Some(p),
            ..Default::default()
        }
    }

    fn body(r: &Rendered) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn slack_says_who_completed_what_and_how_long_it_took() {
        let e = completed_enrollment();
        let r = render(preset(Preset::Slack), samples::COMPLETED, Some(&e));
        let b = body(&r);
        assert_eq!(
            b["text"],
            "🎓 John Doe completed Introduction to Webhooks in 12 days."
        );
        assert_eq!(b["blocks"][0]["type"], "section");
        assert_eq!(b["blocks"][0]["text"]["type"], "mrkdwn");
        assert_eq!(b["blocks"][0]["text"]["text"], b["text"]);
        assert_eq!(r.method, "POST");
        assert_eq!(r.content_type, "application/json");
    }

    #[test]
    fn chat_presets_say_what_an_alert_says() {
        let alert = crate::alerts::subscription_failing(
            &crate::forward::subscription::SubscriptionInput {
                url: Some("https://crm.example/hook".into()),
                ..Default::default()
            }
            .create("sub_1".into(), chrono::Utc::now(), false)
            .unwrap(),
            chrono::Utc::now(),
            5,
            &crate::alerts::LastFailure {
                status: Some(500),
                ..Default::default()
            },
        );
        let event = alert.event(chrono::Utc::now());
        for p in [Preset::Slack, Preset::Discord, Preset::Teams] {
            let text = String::from_utf8(render(preset(p), &event.body, None).body).unwrap();
            assert!(
                text.contains("🚨 Subscription `sub_1` is failing"),
                "{p:?}: {text}"
            );
            assert!(text.contains("answered 500"), "{p:?}: {text}");
        }
    }

    #[test]
    fn slack_control_characters_in_data_cannot_ping_or_break_the_message() {
        let mut e = completed_enrollment();
        e["first_name"] = json!("<!channel>");
        e["last_name"] = json!("\"}] & <@U123>");
        let b = body(&render(preset(Preset::Slack), samples::COMPLETED, Some(&e)));
        let text = b["text"].as_str().unwrap();
        assert!(
            text.starts_with("🎓 &lt;!channel&gt; \"}] &amp; &lt;@U123&gt; completed"),
            "{text}"
        );
    }

    #[test]
    fn discord_allows_no_mentions_and_fits_its_limits() {
        let r = render(preset(Preset::Discord), samples::LESSON_COMPLETED, None);
        let b = body(&r);
        assert_eq!(
            b["content"],
            "✅ Robert Smith completed the lesson Getting started with Webhooks in Introduction to Webhooks."
        );
        assert_eq!(b["allowed_mentions"]["parse"], json!([]));
        assert_eq!(b["embeds"][0]["title"], "lesson.completed");
        assert_eq!(
            b["embeds"][0]["fields"][1]["value"],
            "Introduction to Webhooks"
        );
        assert!(b["content"].as_str().unwrap().chars().count() <= 2000);
    }

    #[test]
    fn teams_sends_one_adaptive_card() {
        let b = body(&render(preset(Preset::Teams), samples::ORDER_CREATED, None));
        assert_eq!(b["type"], "message");
        let a = &b["attachments"][0];
        assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
        assert_eq!(a["content"]["type"], "AdaptiveCard");
        assert_eq!(
            a["content"]["body"][0]["text"],
            "💳 Robert Smith bought Introduction to Webhooks for $50."
        );
    }

    #[test]
    fn generic_json_is_flat_and_typed() {
        let e = completed_enrollment();
        let b = body(&render(preset(Preset::Json), samples::COMPLETED, Some(&e)));
        assert_eq!(b["topic"], "enrollment.completed");
        assert_eq!(b["course_id"], 123);
        assert_eq!(b["email"], "john@doe.com");
        assert_eq!(b["progress"], 100);
        assert_eq!(b["status"], "completed");
        assert_eq!(b["days_to_complete"], 12);
        // Without an enrollment the same fields come from the payload, or null.
        let b = body(&render(preset(Preset::Json), samples::USER_SIGNUP, None));
        assert_eq!(b["email"], "ninjas@thinkific.com");
        assert_eq!(b["enrollment_id"], Value::Null);
        assert_eq!(b["course_id"], Value::Null);
    }

    #[test]
    fn custom_templates_render_url_headers_and_json_safely() {
        let spec = TemplateSpec {
            method: Some("put".into()),
            url: Some(
                "https://crm.example/contacts/{{ student.email }}?tag={{ course.name }}".into(),
            ),
            headers: [("X-Course".to_string(), "{{ course.id }}".to_string())].into(),
            body: Some(
                r#"{"email": {{ student.email }}, "pct": {{ payload.percentage_completed }}}"#
                    .into(),
            ),
            ..Default::default()
        };
        let r = render(spec, samples::PROGRESS, None);
        assert_eq!(r.method, "PUT");
        assert_eq!(
            r.url.as_deref(),
            Some(
                "https://crm.example/contacts/%5BTEST%5D+john%40doe.com?tag=%5BTEST%5D+lorem+ipsum"
            )
        );
        assert_eq!(r.headers, vec![("X-Course".to_string(), "25".to_string())]);
        let b = body(&r);
        assert_eq!(b["email"], "[TEST] john@doe.com");
    }

    #[test]
    fn a_template_that_cannot_render_gives_an_error_not_a_half_body() {
        let bad_syntax = TemplateSpec {
            body: Some("{\"a\": {{ student.email }".into()),
            ..Default::default()
        };
        let e = Shaper::new(&bad_syntax).unwrap_err();
        assert_eq!(e.part, "body");
        assert!(e.reason.starts_with("line 1"), "{e}");

        let event: Value = serde_json::from_str(samples::PROGRESS).unwrap();
        let input = RenderInput {
            source: "default",
            topic: "enrollment.progress",
            event: &event,
            enrollment: None,
        };
        let forever = TemplateSpec {
            body: Some("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{}".into()),
            ..Default::default()
        };
        let e = Shaper::new(&forever).unwrap().render(&input).unwrap_err();
        assert!(e.reason.contains("steps"), "{e}");

        let huge = TemplateSpec {
            body: Some("[{% for i in range(5000) %}{{ payload.user.email }},{% endfor %}1]".into()),
            ..Default::default()
        };
        let e = Shaper::new(&huge).unwrap().render(&input).unwrap_err();
        assert!(e.reason.contains("bytes"), "{e}");

        let not_json = TemplateSpec {
            body: Some("email={{ student.email }}".into()),
            ..Default::default()
        };
        let e = Shaper::new(&not_json).unwrap().render(&input).unwrap_err();
        assert!(e.reason.contains("valid JSON"), "{e}");

        let header_break = TemplateSpec {
            body: Some("{}".into()),
            headers: [("X-A".to_string(), "a{{ '\\r\\n' }}Evil: 1".to_string())].into(),
            ..Default::default()
        };
        let e = Shaper::new(&header_break)
            .unwrap()
            .render(&input)
            .unwrap_err();
        assert_eq!(e.part, "headers.X-A");

        for bad in [
            TemplateSpec::default(),
            TemplateSpec {
                method: Some("DELETE".into()),
                ..preset(Preset::Slack)
            },
            TemplateSpec {
                content_type: Some("text/plain".into()),
                ..preset(Preset::Slack)
            },
            TemplateSpec {
                headers: [("Bad Name".to_string(), "x".to_string())].into(),
                ..preset(Preset::Slack)
            },
        ] {
            assert!(Shaper::new(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_bodies_are_sent_as_written() {
        let spec = TemplateSpec {
            body: Some("{{ student.email }} reached {{ progress }} %".into()),
            content_type: Some("text/plain; charset=utf-8".into()),
            ..Default::default()
        };
        let r = render(spec, samples::PROGRESS, None);
        assert_eq!(r.body, b"[TEST] john@doe.com reached 24 %");
    }
}

//! Subscription filters: a small JSON query language over an event, in the
//! syntax Convoy and Outpost users know (MongoDB-style operators, dotted paths).
//!
//! ```json
//! {"payload.course.id": {"$in": [68, 71]}, "payload.free_trial": false}
//! ```
//!
//! - A key is a dotted path into the event (`payload.user.email`); an object
//!   value without `$` keys nests paths (`{"payload": {"course": {"id": 68}}}`
//!   is the same as `{"payload.course.id": 68}`).
//! - A plain value means `$eq`; several conditions in one object all must hold.
//! - Field operators: `$eq`, `$ne` (alias `$neq`), `$gt`, `$gte`, `$lt`, `$lte`,
//!   `$in`, `$nin`, `$exists` (alias `$exist`), and `$not` over a condition.
//! - Logical operators: `$and`, `$or` (non-empty arrays of filters), `$not` (a filter).
//! - Arrays match when any element matches (`{"payload.tags": "vip"}` matches
//!   `["new", "vip"]`); `$ne` and `$nin` match when no element is equal.
//! - Numbers written as strings (Thinkific's `"24.0"`) compare as numbers with
//!   numbers and with each other; other strings compare as text (so ISO dates
//!   order correctly); values of different kinds are never equal or ordered.
//!
//! A filter that does not parse is refused with where and why ([`FilterError`]).
//! Evaluation is pure and bounded by the filter's size (limits below).

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Value};

/// The largest filter text accepted.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;
/// The deepest nesting of operators and paths accepted.
pub const MAX_DEPTH: usize = 32;

/// A parsed, valid filter. Keep the text it came from to show it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Field { path: Vec<String>, cond: Cond },
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    All(Vec<Cond>),
    Eq(Value),
    Ne(Value),
    Cmp(CmpOp, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Not(Box<Cond>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// Why a filter was refused: where (a JSON path into the filter, or the line
/// and column of a syntax error) and what was wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    pub at: String,
    pub reason: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter {}: {}", self.at, self.reason)
    }
}

impl std::error::Error for FilterError {}

const FIELD_OPERATORS: &str =
    "$eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists, $not (or a nested object of paths)";
const TOP_OPERATORS: &str = "$and, $or, $not (or a dotted path)";

impl Filter {
    /// Parse a filter from its JSON text.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError {
                at: "text".into(),
                reason: format!(
                    "is {} bytes, more than the {MAX_FILTER_BYTES} allowed",
                    text.len()
                ),
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| FilterError {
            at: format!("at line {} column {}", e.line(), e.column()),
            reason: format!("is not valid JSON ({e})"),
        })?;
        Self::from_value(&value)
    }

    /// Build a filter from JSON already parsed (an API body's `filter` field).
    pub fn from_value(value: &Value) -> Result<Filter, FilterError> {
        // serde_json stops at 128 levels; ours is lower so evaluation stays cheap.
        let root = parse_filter(value, &mut Vec::new(), "$", 0)?;
        Ok(Filter { root })
    }

    /// Does this event (its envelope as JSON, with `payload`) match?
    pub fn matches(&self, event: &Value) -> bool {
        eval(&self.root, event)
    }
}

fn err(at: &str, reason: impl Into<String>) -> FilterError {
    FilterError {
        at: format!("at {at}"),
        reason: reason.into(),
    }
}

fn child(at: &str, key: &str) -> String {
    format!("{at}[{}]", Value::String(key.to_string()))
}

/// A filter object: logical operators and paths, all of which must hold.
/// `prefix` is the path of the enclosing nested object, if any.
fn parse_filter(
    value: &Value,
    prefix: &mut Vec<String>,
    at: &str,
    depth: usize,
) -> Result<Node, FilterError> {
    if depth > MAX_DEPTH {
        return Err(err(at, format!("nests deeper than {MAX_DEPTH} levels")));
    }
    let Value::Object(map) = value else {
        return Err(err(
            at,
            format!(
                "must be an object of paths and operators, not {}",
                kind(value)
            ),
        ));
    };
    let mut nodes = Vec::with_capacity(map.len());
    for (key, v) in map {
        let here = child(at, key);
        match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = v else {
                    return Err(err(&here, format!("{key} takes an array of filters")));
                };
                if items.is_empty() {
                    return Err(err(&here, format!("{key} needs at least one filter")));
                }
                let parts = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_filter(item, prefix, &format!("{here}[{i}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                nodes.push(if key == "$and" {
                    Node::All(parts)
                } else {
                    Node::Any(parts)
                });
            }
            "$not" => nodes.push(Node::Not(Box::new(parse_filter(
                v,
                prefix,
                &here,
                depth + 1,
            )?))),
            k if k.starts_with('$') => {
                return Err(err(
                    &here,
                    format!("unknown operator {k} here; allowed: {TOP_OPERATORS}"),
                ));
            }
            path => {
                let segments: Vec<String> = path.split('.').map(str::to_string).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(err(&here, "a path has an empty segment (`a..b`, `.a`)"));
                }
                let outer = prefix.len();
                prefix.extend(segments);
                let node = parse_field(v, prefix, &here, depth + 1);
                prefix.truncate(outer);
                nodes.push(node?);
            }
        }
    }
    Ok(if nodes.len() == 1 {
        nodes.pop().expect("one node")
    } else {
        Node::All(nodes)
    })
}

/// What a path must satisfy: a value (equality), an object of operators, or
/// an object of further paths.
fn parse_field(
    value: &Value,
    path: &mut Vec<String>,
    at: &str,
    depth: usize,
) -> Result<Node, FilterError> {
    let Value::Object(map) = value else {
        return Ok(Node::Field {
            path: path.clone(),
            cond: Cond::Eq(value.clone()),
        });
    };
    let operators = map.keys().filter(|k| k.starts_with('$')).count();
    if operators == 0 && !map.is_empty() {
        return parse_filter(value, path, at, depth);
    }
    if operators != map.len() {
        return Err(err(
            at,
            "mixes operators ($…) and paths in one object; split them with $and",
        ));
    }
    Ok(Node::Field {
        path: path.clone(),
        cond: parse_conditions(map, at, depth)?,
    })
}

fn parse_conditions(map: &Map<String, Value>, at: &str, depth: usize) -> Result<Cond, FilterError> {
    if depth > MAX_DEPTH {
        return Err(err(at, format!("nests deeper than {MAX_DEPTH} levels")));
    }
    if map.is_empty() {
        // `{}` as a value: equality with an empty object.
        return Ok(Cond::Eq(Value::Object(Map::new())));
    }
    let mut conds = Vec::with_capacity(map.len());
    for (op, v) in map {
        let here = child(at, op);
        conds.push(match op.as_str() {
            "$eq" => Cond::Eq(v.clone()),
            "$ne" | "$neq" => Cond::Ne(v.clone()),
            "$gt" => Cond::Cmp(CmpOp::Gt, comparable(v, &here)?),
            "$gte" => Cond::Cmp(CmpOp::Gte, comparable(v, &here)?),
            "$lt" => Cond::Cmp(CmpOp::Lt, comparable(v, &here)?),
            "$lte" => Cond::Cmp(CmpOp::Lte, comparable(v, &here)?),
            "$in" | "$nin" => {
                let Value::Array(items) = v else {
                    return Err(err(&here, format!("{op} takes an array of values")));
                };
                if op == "$in" {
                    Cond::In(items.clone())
                } else {
                    Cond::Nin(items.clone())
                }
            }
            "$exists" | "$exist" => match v {
                Value::Bool(b) => Cond::Exists(*b),
                other => {
                    return Err(err(
                        &here,
                        format!("{op} takes true or false, not {}", kind(other)),
                    ));
                }
            },
            "$not" => match v {
                Value::Object(inner) if inner.keys().all(|k| k.starts_with('$')) => {
                    Cond::Not(Box::new(parse_conditions(inner, &here, depth + 1)?))
                }
                _ => Cond::Not(Box::new(Cond::Eq(v.clone()))),
            },
            other => {
                return Err(err(
                    &here,
                    format!("unknown operator {other}; allowed: {FIELD_OPERATORS}"),
                ));
            }
        });
    }
    Ok(if conds.len() == 1 {
        conds.pop().expect("one condition")
    } else {
        Cond::All(conds)
    })
}

fn comparable(v: &Value, at: &str) -> Result<Value, FilterError> {
    match v {
        Value::Number(_) | Value::String(_) => Ok(v.clone()),
        other => Err(err(
            at,
            format!("compares with a number or a string, not {}", kind(other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn eval(node: &Node, event: &Value) -> bool {
    match node {
        Node::All(nodes) => nodes.iter().all(|n| eval(n, event)),
        Node::Any(nodes) => nodes.iter().any(|n| eval(n, event)),
        Node::Not(n) => !eval(n, event),
        Node::Field { path, cond } => {
            let mut found = Vec::new();
            resolve(event, path, &mut found);
            holds(cond, &found)
        }
    }
}

/// The values at `path`, stepping into every element of an array on the way
/// (`payload.items.product_id` reaches each item's id).
fn resolve<'a>(value: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Value::Object(map) => {
            if let Some(v) = map.get(first) {
                resolve(v, rest, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| resolve(v, path, out)),
        _ => {}
    }
}

/// A condition over the values found at a path (none when it is absent).
fn holds(cond: &Cond, found: &[&Value]) -> bool {
    let any = |f: &dyn Fn(&Value) -> bool| found.iter().any(|v| each(v, f));
    match cond {
        Cond::All(conds) => conds.iter().all(|c| holds(c, found)),
        Cond::Eq(want) => found.iter().any(|v| equal(v, want)) || any(&|v| equal(v, want)),
        Cond::Ne(want) => !holds(&Cond::Eq(want.clone()), found),
        Cond::Cmp(op, want) => any(&|v| {
            compare(v, want).is_some_and(|o| match op {
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Gte => o != Ordering::Less,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Lte => o != Ordering::Greater,
            })
        }),
        Cond::In(wants) => wants.iter().any(|w| holds(&Cond::Eq(w.clone()), found)),
        Cond::Nin(wants) => !holds(&Cond::In(wants.clone()), found),
        Cond::Exists(want) => found.is_empty() != *want,
        Cond::Not(c) => !holds(c, found),
    }
}

/// `f` on a value, or on any element when it is an array.
fn each(v: &Value, f: &dyn Fn(&Value) -> bool) -> bool {
    match v {
        Value::Array(items) => items.iter().any(f),
        other => f(other),
    }
}

/// A number, or a string that is one (`"24.0"`).
fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) if x == y => true,
        (Value::Number(_) | Value::String(_), Value::Number(_) | Value::String(_)) => {
            match (numeric(a), numeric(b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        }
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (numeric(a), numeric(b)) {
        return x.partial_cmp(&y);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "id": "20191029145629636106318",
            "resource": "enrollment",
            "action": "progress",
            "created_at": "2019-10-29T18:56:29.474Z",
            "payload": {
                "course": {"id": 68, "name": "Intro"},
                "free_trial": false,
                "percentage_completed": "24.0",
                "user": {"email": "a@b.c", "id": 7},
                "tags": ["new", "vip"],
                "items": [{"product_id": 1}, {"product_id": 2}],
                "coupon": null
            }
        })
    }

    fn m(filter: &str) -> bool {
        Filter::parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(&event())
    }

    #[test]
    fn the_issue_example_matches() {
        assert!(m(
            r#"{"payload.course.id": {"$in": [68, 71]}, "payload.free_trial": false}"#
        ));
        assert!(!m(
            r#"{"payload.course.id": {"$in": [70, 71]}, "payload.free_trial": false}"#
        ));
        assert!(!m(
            r#"{"payload.course.id": {"$in": [68]}, "payload.free_trial": true}"#
        ));
    }

    #[test]
    fn each_field_operator() {
        assert!(m(r#"{"resource": {"$eq": "enrollment"}}"#));
        assert!(!m(r#"{"resource": {"$eq": "order"}}"#));
        assert!(m(r#"{"resource": {"$ne": "order"}}"#));
        assert!(m(r#"{"resource": {"$neq": "order"}}"#));
        assert!(!m(r#"{"resource": {"$ne": "enrollment"}}"#));
        assert!(m(r#"{"payload.course.id": {"$gt": 67}}"#));
        assert!(!m(r#"{"payload.course.id": {"$gt": 68}}"#));
        assert!(m(r#"{"payload.course.id": {"$gte": 68}}"#));
        assert!(m(r#"{"payload.course.id": {"$lt": 69}}"#));
        assert!(!m(r#"{"payload.course.id": {"$lt": 68}}"#));
        assert!(m(r#"{"payload.course.id": {"$lte": 68}}"#));
        assert!(m(r#"{"payload.course.id": {"$gt": 60, "$lt": 70}}"#));
        assert!(!m(r#"{"payload.course.id": {"$gt": 60, "$lt": 65}}"#));
        assert!(m(r#"{"payload.course.id": {"$nin": [1, 2]}}"#));
        assert!(!m(r#"{"payload.course.id": {"$nin": [68]}}"#));
        assert!(m(r#"{"payload.coupon": {"$exists": true}}"#), "null exists");
        assert!(m(r#"{"payload.missing": {"$exists": false}}"#));
        assert!(!m(r#"{"payload.missing": {"$exist": true}}"#));
        assert!(m(r#"{"payload.course.id": {"$not": {"$gt": 100}}}"#));
        assert!(!m(r#"{"payload.course.id": {"$not": 68}}"#));
        assert!(m(r#"{"payload.coupon": null}"#));
    }

    #[test]
    fn logical_operators() {
        assert!(m(
            r#"{"$or": [{"resource": "order"}, {"payload.course.id": 68}]}"#
        ));
        assert!(!m(
            r#"{"$or": [{"resource": "order"}, {"payload.course.id": 1}]}"#
        ));
        assert!(m(
            r#"{"$and": [{"resource": "enrollment"}, {"action": "progress"}]}"#
        ));
        assert!(!m(
            r#"{"$and": [{"resource": "enrollment"}, {"action": "x"}]}"#
        ));
        assert!(m(r#"{"$not": {"action": "completed"}}"#));
        assert!(!m(r#"{"$not": {"action": "progress"}}"#));
        assert!(m(r#"{}"#), "an empty filter matches everything");
    }

    #[test]
    fn numbers_in_strings_compare_as_numbers() {
        assert!(m(r#"{"payload.percentage_completed": {"$gte": 24}}"#));
        assert!(m(r#"{"payload.percentage_completed": 24}"#));
        assert!(m(r#"{"payload.percentage_completed": "24"}"#));
        assert!(!m(r#"{"payload.percentage_completed": {"$gt": 24.5}}"#));
        assert!(m(r#"{"payload.course.id": {"$in": ["68"]}}"#));
        // Text that is not a number compares as text: ISO dates order.
        assert!(m(r#"{"created_at": {"$gte": "2019-01-01"}}"#));
        assert!(!m(r#"{"created_at": {"$lt": "2019-01-01"}}"#));
        // Different kinds are never ordered.
        assert!(!m(r#"{"payload.user.email": {"$gt": 5}}"#));
    }

    #[test]
    fn nested_objects_and_arrays() {
        assert!(m(r#"{"payload": {"course": {"id": 68}}}"#));
        assert!(!m(r#"{"payload": {"course": {"id": 69}}}"#));
        assert!(m(r#"{"payload.tags": "vip"}"#), "array contains");
        assert!(!m(r#"{"payload.tags": "gold"}"#));
        assert!(m(r#"{"payload.tags": {"$in": ["gold", "vip"]}}"#));
        assert!(
            !m(r#"{"payload.tags": {"$ne": "vip"}}"#),
            "no element may equal"
        );
        assert!(m(r#"{"payload.items.product_id": 2}"#), "through arrays");
        assert!(
            m(r#"{"payload.tags": ["new", "vip"]}"#),
            "whole-array equality"
        );
    }

    #[test]
    fn bad_filters_are_refused_with_where_and_why() {
        let e = Filter::parse(r#"{"payload.course.id": {"$in": 68}}"#).unwrap_err();
        assert_eq!(e.at, r#"at $["payload.course.id"]["$in"]"#);
        assert!(e.reason.contains("array"), "{e}");

        let e = Filter::parse(r#"{"a": {"$regex": "x"}}"#).unwrap_err();
        assert!(e.reason.contains("unknown operator $regex"), "{e}");
        assert!(e.reason.contains("$nin"), "lists what is allowed: {e}");

        let e = Filter::parse(r#"{"$nor": []}"#).unwrap_err();
        assert!(e.reason.contains("$and, $or, $not"), "{e}");

        let e = Filter::parse("{\"a\": 1,\n \"b\": }").unwrap_err();
        assert_eq!(e.at, "at line 2 column 7");

        for bad in [
            r#"[1]"#,
            r#"{"$or": []}"#,
            r#"{"$and": {}}"#,
            r#"{"a": {"$exists": 1}}"#,
            r#"{"a": {"$gt": true}}"#,
            r#"{"a": {"$eq": 1, "b": 2}}"#,
            r#"{"a..b": 1}"#,
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad} should be refused");
        }

        let deep = format!(
            "{}{}",
            r#"{"$not":"#.repeat(40),
            "{}".to_string() + &"}".repeat(40)
        );
        assert!(Filter::parse(&deep).unwrap_err().reason.contains("deeper"));
        let huge = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_FILTER_BYTES));
        assert!(Filter::parse(&huge).unwrap_err().reason.contains("bytes"));
    }
}

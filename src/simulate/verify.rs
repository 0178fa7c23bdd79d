//! `--verify`: read a receiver's projection through its query API and list
//! every difference from the expected state.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::traffic::Expected;
use crate::store::{CourseStats, median};
use crate::views::EnrollmentView;

/// Per-course statistics of the expected state, with the same definitions as
/// [`crate::store::Store::course_stats`].
pub fn expected_courses(expected: &Expected, now: DateTime<Utc>) -> Vec<CourseStats> {
    #[derive(Default)]
    struct Acc {
        name: Option<String>,
        n: i64,
        completed: i64,
        trial: i64,
        expired: i64,
        progress: f64,
        days: Vec<f64>,
    }
    let mut by_course: BTreeMap<i64, Acc> = BTreeMap::new();
    for e in expected.enrollments.values() {
        let Some(course) = e.course_id else { continue };
        let a = by_course.entry(course).or_default();
        a.name = a.name.take().max(e.course_name.clone());
        a.n += 1;
        a.progress += e.progress;
        match e.status(now) {
            crate::projection::Status::Completed => a.completed += 1,
            crate::projection::Status::Trial => a.trial += 1,
            crate::projection::Status::Expired => a.expired += 1,
            crate::projection::Status::Active => {}
        }
        a.days.extend(e.days_to_complete());
    }
    by_course
        .into_iter()
        .map(|(course_id, mut a)| CourseStats {
            source: expected.source.clone(),
            course_id,
            name: a.name,
            enrollments: a.n,
            active: a.n - a.completed - a.trial - a.expired,
            trial: a.trial,
            completed: a.completed,
            expired: a.expired,
            completion_rate: a.completed as f64 / a.n.max(1) as f64,
            average_progress: a.progress / a.n.max(1) as f64,
            median_days_to_complete: median(&mut a.days),
        })
        .collect()
}

/// Fetches the receiver's enrollments and courses for the expected source and
/// lists every mismatch (empty: the receiver is right).
pub async fn verify(
    client: &reqwest::Client,
    api_base: &str,
    api_token: Option<&str>,
    expected: &Expected,
) -> anyhow::Result<Vec<String>> {
    let base = api_base.trim_end_matches('/');
    let get = |path: String| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some(t) = api_token {
            r = r.bearer_auth(t);
        }
        async move {
            let response = r.send().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach {base}{path}: {:#} (is the receiver running there?)",
                    anyhow::Error::from(e)
                )
            })?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                anyhow::bail!(
                    "{base}{path} answered {status}: {text} (is --verify an enrollhook API base URL, and --api-token right?)"
                );
            }
            serde_json::from_str::<Value>(&text)
                .map_err(|e| anyhow::anyhow!("{base}{path} did not answer JSON: {e}"))
        }
    };
    let source = &expected.source;
    let now = Utc::now();

    let mut actual: BTreeMap<i64, Value> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/enrollments?source={source}&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get(path).await?;
        for item in page["items"].as_array().into_iter().flatten() {
            if let Some(id) = item["enrollment_id"].as_i64() {
                actual.insert(id, item.clone());
            }
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }

    let mut mismatches = Vec::new();
    for (id, e) in &expected.enrollments {
        let want = serde_json::to_value(EnrollmentView::new(e, now)).expect("views serialize");
        match actual.remove(id) {
            None => mismatches.push(format!("enrollment {id}: missing from the receiver")),
            Some(got) => {
                for (field, w) in want.as_object().expect("a view is an object") {
                    let g = &got[field];
                    if !same(w, g) {
                        mismatches.push(format!(
                            "enrollment {id}: {field} expected {w}, receiver has {g}"
                        ));
                    }
                }
            }
        }
    }
    for id in actual.keys() {
        mismatches.push(format!(
            "enrollment {id}: the receiver has it, the simulated traffic never created it"
        ));
    }

    let courses = get(format!("/api/courses?source={source}")).await?;
    let mut actual: BTreeMap<i64, Value> = courses["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["course_id"].as_i64()?, c.clone())))
        .collect();
    for c in expected_courses(expected, now) {
        let want = serde_json::to_value(&c).expect("stats serialize");
        match actual.remove(&c.course_id) {
            None => mismatches.push(format!("course {}: missing from /api/courses", c.course_id)),
            Some(got) => {
                for (field, w) in want.as_object().expect("an object") {
                    if !same(w, &got[field]) {
                        mismatches.push(format!(
                            "course {}: {field} expected {w}, receiver has {}",
                            c.course_id, got[field]
                        ));
                    }
                }
            }
        }
    }
    for id in actual.keys() {
        mismatches.push(format!(
            "course {id}: the receiver lists it, no expected enrollment is in it"
        ));
    }
    verify_learning(&get, expected, now, &mut mismatches).await?;
    Ok(mismatches)
}

/// Enrollments whose lessons are checked one by one (the funnels check all).
const LESSON_CHECKS: usize = 100;

/// The learning projection: every course's funnel (lessons, completions,
/// stalled students per lesson), and the lessons of the first enrollments.
async fn verify_learning<F, Fut>(
    get: &F,
    expected: &Expected,
    now: DateTime<Utc>,
    mismatches: &mut Vec<String>,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let source = &expected.source;
    let mut learning = expected.learning.clone();
    for e in expected.enrollments.values() {
        learning.enrollment(e);
    }
    let stalled = crate::store::Stalled::days(14, now);
    // Per course: lesson -> (completed, stalled here).
    let mut want: BTreeMap<i64, BTreeMap<i64, (i64, i64)>> = BTreeMap::new();
    for l in learning.lessons.values() {
        want.entry(l.course_id)
            .or_default()
            .insert(l.info.lesson_id, (0, 0));
    }
    for c in learning.completions.values() {
        if let Some(n) = want.entry(c.course_id).or_default().get_mut(&c.lesson_id) {
            n.0 += 1;
        }
    }
    for l in learning.learners.values() {
        if l.stalled(stalled.before, stalled.now)
            && let Some(lesson) = l.last_lesson_id
            && let Some(n) = want.entry(l.course_id).or_default().get_mut(&lesson)
        {
            n.1 += 1;
        }
    }
    for (course, lessons) in &want {
        let path = format!("/api/courses/{source}/{course}/funnel?stalled_days=14");
        let Some(funnel) = not_found_is_none(get(path).await)? else {
            mismatches.push(format!(
                "course {course}: no funnel, the receiver never saw its lessons"
            ));
            continue;
        };
        let got: BTreeMap<i64, (i64, i64)> = funnel["lessons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| {
                Some((
                    l["lesson_id"].as_i64()?,
                    (l["completed"].as_i64()?, l["stalled_here"].as_i64()?),
                ))
            })
            .collect();
        if &got != lessons {
            mismatches.push(format!(
                "course {course}: funnel (lesson: completed, stalled here) expected {lessons:?}, receiver has {got:?}"
            ));
        }
    }
    for e in expected.enrollments.values().take(LESSON_CHECKS) {
        let (Some(user), Some(course)) = (e.user_id, e.course_id) else {
            continue;
        };
        let want = learning
            .learners
            .get(&(source.clone(), course, user))
            .map_or(0, |l| l.lessons_completed);
        let path = format!("/api/enrollments/{source}/{}", e.enrollment_id);
        let Some(detail) = not_found_is_none(get(path).await)? else {
            continue; // reported missing above
        };
        let got = detail["lessons"].as_array().map_or(0, Vec::len) as i64;
        if got != want {
            mismatches.push(format!(
                "enrollment {}: {want} lessons expected, receiver has {got}",
                e.enrollment_id
            ));
        }
    }
    Ok(())
}

/// A 404 from the receiver (something it never received) as `None`.
fn not_found_is_none(answer: anyhow::Result<Value>) -> anyhow::Result<Option<Value>> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.to_string().contains(" answered 404 ") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Equal, with floats compared to a relative 1e-9 (sums in another order).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if !(a.is_i64() && b.is_i64()) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

//! Learning (issue #17) through the real router on both backends: lessons and
//! quizzes delivered as Thinkific sends them, in any order, read back as a
//! course funnel, stalled students, a student's page, quiz statistics, and
//! checked by `rebuild`.

use chrono::{DateTime, Duration, NaiveTime, Utc};
use serde_json::{Value, json};

use crate::common::backend::{TestDatabase, on_both_backends};
use crate::common::{TestApp, enrollment_event};
use enrollhook::store::{PageRequest, Stalled, StalledFilter, StalledOrder};

on_both_backends!(
    the_published_lesson_sample_is_linked_when_its_enrollment_arrives,
    funnel_stalled_and_student_pages,
    quizzes_without_a_course,
    any_arrival_order_with_duplicates_gives_the_same_learning,
    bad_parameters_are_answered_400,
    the_cli_shows_funnel_stalled_and_student,
    stalled_counts_equal_the_stalled_list,
    an_event_without_its_student_still_moves_the_learner,
);

fn lesson(
    id: &str,
    user: i64,
    course: i64,
    enrollment: Option<i64>,
    lesson: (i64, i64, i64),
    at: &str,
) -> Vec<u8> {
    let (lesson_id, chapter_position, position) = lesson;
    let mut payload = json!({
        "chapter": {"id": 900 + chapter_position, "name": format!("Chapter {chapter_position}"), "position": chapter_position},
        "course": {"id": course, "name": format!("Course {course}")},
        "lesson": {"id": lesson_id, "name": format!("Lesson {lesson_id}"), "position": position, "type": "Video"},
        "user": {"id": user, "email": format!("u{user}@example.com"), "first_name": "Stu", "last_name": "Dent"},
    });
    if let Some(e) = enrollment {
        payload["enrollment"] = json!({"id": e});
    }
    serde_json::to_vec(
        &json!({"id": id, "resource": "lesson", "action": "completed",
        "tenant_id": "59", "created_at": at, "payload": payload}),
    )
    .unwrap()
}

fn quiz(id: &str, user: i64, grade: f64, attempts: i64, at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "resource": "quiz", "action": "attempted",
        "tenant_id": "59", "created_at": at, "payload": {
            "attempts": attempts, "correct_count": 3, "incorrect_count": 1, "grade": grade,
            "result_id": 5, "quiz": {"id": 7, "name": "Checkpoint"},
            "user": {"id": user, "email": format!("u{user}@example.com")}}}))
    .unwrap()
}

async fn deliver_all(app: &TestApp, bodies: &[Vec<u8>]) {
    for body in bodies {
        let (status, reply) = app.deliver(body).await;
        assert_eq!(status, 200, "{reply}");
    }
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = app.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn the_published_lesson_sample_is_linked_when_its_enrollment_arrives(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    let sample = enrollhook::thinkific::samples::LESSON_COMPLETED.as_bytes();
    deliver_all(&app, &[sample.to_vec()]).await;
    let student = get_ok(&app, "/api/students/default/123456").await;
    assert_eq!(student["enrollments"], json!([]));
    let course = &student["courses_without_enrollment"][0];
    assert_eq!(course["course_id"], 123);
    assert_eq!(course["learning"]["lessons_completed"], 1);
    assert_eq!(
        course["lessons"][0]["name"],
        "Getting started with Webhooks"
    );
    assert_eq!(course["lessons"][0]["chapter_name"], "Chapter 1");
    assert_eq!(course["lessons"][0]["type"], "Video");
    assert_eq!(course["lessons"][0]["enrollment_id"], 1084282);
    assert_eq!(student["timeline"].as_array().unwrap().len(), 1);

    // Its enrollment arrives later (same user and course).
    let mut enrollment: Value = serde_json::from_slice(&enrollment_event(
        "e1",
        "progress",
        1084282,
        123,
        "10.0",
        "2019-10-29T18:00:00Z",
    ))
    .unwrap();
    enrollment["payload"]["user"]["id"] = json!(123456);
    deliver_all(&app, &[serde_json::to_vec(&enrollment).unwrap()]).await;
    let detail = get_ok(&app, "/api/enrollments/default/1084282").await;
    assert_eq!(detail["lessons"][0]["lesson_id"], 24220);
    let learning = &detail["enrollment"]["learning"];
    assert_eq!(learning["lessons_completed"], 1);
    assert_eq!(
        learning["last_lesson_name"],
        "Getting started with Webhooks"
    );
    assert_eq!(
        learning["last_activity_at"], "2019-10-29T18:56:29.474Z",
        "the lesson is newer than the enrollment event"
    );
    let student = get_ok(&app, "/api/students/default/123456").await;
    assert_eq!(student["courses_without_enrollment"], json!([]));
    assert_eq!(
        student["enrollments"][0]["lessons"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(student["timeline"].as_array().unwrap().len(), 2);
}

/// Course 5: enrollments 1, 2 (users 1001, 1002) in progress, 3 (user 1003)
/// completed; lessons 10, 11 (chapter 1) and 12 (chapter 2). User 1001 was
/// active 3 days ago; user 1002 last on 2024-03-01 (lesson 11, sent without
/// enrollment.id, and lesson 10 completed twice).
fn course_five() -> Vec<Vec<u8>> {
    let recent = (Utc::now() - Duration::days(3)).to_rfc3339();
    vec![
        // Lessons before their enrollments.
        lesson("l1", 1001, 5, Some(1), (10, 1, 0), &recent),
        lesson("l2", 1002, 5, Some(2), (10, 1, 0), "2024-02-01T10:00:00Z"),
        lesson("l3", 1002, 5, None, (11, 1, 1), "2024-03-01T10:00:00Z"),
        lesson("l4", 1002, 5, Some(2), (10, 1, 0), "2024-02-05T10:00:00Z"),
        lesson("l5", 1003, 5, Some(3), (10, 1, 0), "2024-01-20T10:00:00Z"),
        lesson("l6", 1003, 5, Some(3), (11, 1, 1), "2024-01-21T10:00:00Z"),
        lesson("l7", 1003, 5, Some(3), (12, 2, 0), "2024-01-22T10:00:00Z"),
        enrollment_event("e1", "progress", 1, 5, "30.0", "2024-01-10T10:00:00Z"),
        enrollment_event("e2", "progress", 2, 5, "60.0", "2024-01-10T10:00:00Z"),
        enrollment_event("e3", "completed", 3, 5, "100.0", "2024-01-23T10:00:00Z"),
        json!({"id": "o1", "resource": "order", "action": "created", "tenant_id": "59",
               "created_at": "2024-01-05T00:00:00Z",
               "payload": {"id": 77, "amount_cents": 1000, "user": {"id": 1002}}})
        .to_string()
        .into_bytes(),
    ]
}

async fn funnel_stalled_and_student_pages(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    let events = course_five();
    deliver_all(&app, &events).await;
    let (status, reply) = app.deliver(&events[1]).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("duplicate")));

    let funnel = get_ok(&app, "/api/courses/default/5/funnel").await;
    assert_eq!(funnel["stalled_days"], 14);
    assert_eq!(funnel["course_name"], "Course 5");
    assert_eq!(
        (funnel["enrolled"].as_i64(), funnel["stalled"].as_i64()),
        (Some(3), Some(1))
    );
    let lessons: Vec<(i64, i64, i64)> = funnel["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["lesson_id"].as_i64().unwrap(),
                l["completed"].as_i64().unwrap(),
                l["stalled_here"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(lessons, vec![(10, 3, 0), (11, 2, 1), (12, 1, 0)]);
    let funnel = get_ok(&app, "/api/courses/default/5/funnel?stalled_days=2").await;
    assert_eq!(funnel["stalled"], 2, "user 1001 was active 3 days ago");
    assert_eq!(funnel["lessons"][0]["stalled_here"], 1);

    // Stalled students, most inactive first, a page at a time.
    let first = get_ok(&app, "/api/enrollments?stalled_days=2&course_id=5&limit=1").await;
    assert_eq!(first["items"][0]["enrollment_id"], 2);
    let learning = &first["items"][0]["learning"];
    assert_eq!(learning["last_lesson_id"], 11);
    assert_eq!(learning["last_lesson_name"], "Lesson 11");
    assert_eq!(
        learning["lessons_completed"], 2,
        "lesson 10 twice counts once"
    );
    assert_eq!(learning["last_activity_at"], "2024-03-01T10:00:00Z");
    assert!(learning["days_inactive"].as_f64().unwrap() > 200.0);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = get_ok(
        &app,
        &format!("/api/enrollments?stalled_days=2&course_id=5&limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(second["items"][0]["enrollment_id"], 1);
    assert_eq!(second["next_cursor"], Value::Null);
    let reversed = get_ok(&app, "/api/enrollments?stalled_days=2&order=least_inactive").await;
    let ids: Vec<i64> = reversed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["enrollment_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2]);
    let default = get_ok(&app, "/api/enrollments?stalled_days=14").await;
    assert_eq!(default["items"].as_array().unwrap().len(), 1);

    let student = get_ok(&app, "/api/students/default/1002").await;
    assert_eq!(student["email"], "s2@example.com");
    let enrollment = &student["enrollments"][0];
    assert_eq!(enrollment["enrollment"]["enrollment_id"], 2);
    let lesson_ids: Vec<i64> = enrollment["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lesson_id"].as_i64().unwrap())
        .collect();
    assert_eq!(lesson_ids, vec![10, 11]);
    assert_eq!(
        enrollment["lessons"][0]["completed_at"], "2024-02-01T10:00:00Z",
        "the first time"
    );
    let topics: Vec<&str> = student["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        topics,
        vec![
            "lesson.completed",
            "lesson.completed",
            "lesson.completed",
            "enrollment.progress",
            "order.created"
        ]
    );

    let courses = get_ok(&app, "/api/courses").await;
    let course = &courses["items"][0];
    assert_eq!(
        (
            course["course_id"].as_i64(),
            course["lessons_seen"].as_i64()
        ),
        (Some(5), Some(3))
    );
    assert_eq!(course["stalled"], 1);

    // Rebuilt from the log: nothing differs, and the answers are the same.
    let store = app.store();
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (check.changed, check.learning, check.index_rows),
        (0, 0, 0),
        "{check:?}"
    );
    store.rebuild_projection(false).await.unwrap();
    let again = get_ok(&app, "/api/courses/default/5/funnel?stalled_days=2").await;
    assert_eq!(again, funnel);
}

async fn quizzes_without_a_course(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    deliver_all(
        &app,
        &[
            quiz("q2", 1002, 80.0, 2, "2024-02-02T10:00:00Z"),
            quiz("q1", 1002, 40.0, 1, "2024-02-01T10:00:00Z"),
            quiz("q3", 1001, 90.0, 1, "2024-02-03T10:00:00Z"),
        ],
    )
    .await;
    let quizzes = get_ok(&app, "/api/quizzes").await;
    let q = &quizzes["items"][0];
    assert_eq!(
        (q["quiz_id"].as_i64(), q["quiz_name"].as_str()),
        (Some(7), Some("Checkpoint"))
    );
    assert_eq!(
        (q["students"].as_i64(), q["attempts"].as_i64()),
        (Some(2), Some(3))
    );
    assert_eq!(q["average_best_grade"], 85.0);
    assert_eq!(q["median_best_grade"], 85.0);
    assert_eq!(q["course_id"], Value::Null);
    let none = get_ok(&app, "/api/quizzes?course_id=5").await;
    assert_eq!(none["items"], json!([]));
    let student = get_ok(&app, "/api/students/default/1002").await;
    let mine = &student["quizzes"][0];
    assert_eq!(
        (mine["best_grade"].as_f64(), mine["latest_grade"].as_f64()),
        (Some(80.0), Some(80.0))
    );
    assert_eq!(mine["attempts"], 2);
    assert_eq!(student["enrollments"], json!([]), "no course: no learner");
    let check = app.store().rebuild_projection(true).await.unwrap();
    assert_eq!((check.learning, check.index_rows), (0, 0), "{check:?}");
}

/// What the learning API answers about course five and its students.
async fn learning_answers(app: &TestApp) -> Vec<Value> {
    let mut out = vec![
        get_ok(app, "/api/courses/default/5/funnel?stalled_days=2").await,
        get_ok(app, "/api/enrollments?stalled_days=2").await,
        get_ok(app, "/api/quizzes").await,
    ];
    for user in [1001, 1002, 1003] {
        let mut student = get_ok(app, &format!("/api/students/default/{user}")).await;
        // Log positions and arrival times differ between arrival orders.
        student["timeline"] = json!(student["timeline"].as_array().unwrap().len());
        for e in student["enrollments"].as_array_mut().unwrap() {
            e["enrollment"]["learning"]["days_inactive"] = Value::Null;
        }
        out.push(student);
    }
    for item in out[1]["items"].as_array_mut().unwrap() {
        item["learning"]["days_inactive"] = Value::Null;
    }
    out
}

async fn any_arrival_order_with_duplicates_gives_the_same_learning(db: TestDatabase) {
    let mut events = course_five();
    events.push(quiz("q1", 1002, 40.0, 1, "2024-02-01T10:00:00Z"));
    events.push(quiz("q2", 1002, 80.0, 2, "2024-02-02T10:00:00Z"));
    // In order, on one database.
    let app = db.serve(|_| {}).await;
    deliver_all(&app, &events).await;
    let expected = learning_answers(&app).await;
    // Shuffled, each event possibly twice, in concurrent bursts (so batches
    // mix them), on as many fresh databases of the same backend.
    let backend = app.store().backend();
    for seed in 1..=4u64 {
        let db = TestDatabase::create(if backend == "sqlite" {
            crate::common::backend::Backend::Sqlite
        } else {
            crate::common::backend::Backend::Postgres
        })
        .await;
        let shuffled_app = db.serve(|_| {}).await;
        let mut order: Vec<Vec<u8>> = events.clone();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let repeats: Vec<Vec<u8>> = order.iter().filter(|_| next() % 3 == 0).cloned().collect();
        order.extend(repeats);
        for burst in order.chunks(4) {
            futures::future::join_all(burst.iter().map(|b| shuffled_app.deliver(b))).await;
        }
        assert_eq!(
            learning_answers(&shuffled_app).await,
            expected,
            "seed {seed}"
        );
    }
}

async fn bad_parameters_are_answered_400(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    deliver_all(&app, &course_five()).await;
    for (path, says) in [
        (
            "/api/courses/default/5/funnel?stalled_days=0",
            "stalled_days must be between 1 and 3660",
        ),
        (
            "/api/courses/default/five/funnel",
            "course id must be an integer",
        ),
        (
            "/api/courses/default/5/funnel?days=3",
            "invalid query parameters",
        ),
        (
            "/api/enrollments?stalled_days=99999",
            "stalled_days must be between 1 and 3660",
        ),
        (
            "/api/enrollments?stalled_days=3&order=sideways",
            "order must be most_inactive or least_inactive",
        ),
        (
            "/api/enrollments?stalled_days=3&status=active",
            "with stalled_days only",
        ),
        (
            "/api/enrollments?stalled_days=3&cursor=nonsense",
            "invalid cursor",
        ),
        ("/api/students/default/abc", "user id must be an integer"),
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }
    for path in ["/api/courses/default/99/funnel", "/api/students/default/42"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
}

fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(crate::common::process::BIN)
        .args(args)
        .args(["--database", url])
        .env_remove("ENROLLHOOK_DATABASE_URL")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn the_cli_shows_funnel_stalled_and_student(db: TestDatabase) {
    let url = db.url.clone();
    let app = db.serve(|_| {}).await;
    deliver_all(&app, &course_five()).await;
    app.store().sync_projection().await.unwrap();

    let (ok, out, err) = cli(&url, &["funnel", "--course", "5", "--format", "json"]);
    assert!(ok, "{err}");
    let funnel: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(funnel["stalled"], 1);
    assert_eq!(funnel["lessons"][1]["stalled_here"], 1);
    let (ok, out, err) = cli(&url, &["funnel", "--course", "5", "--format", "csv"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().next(),
        Some("lesson_id,name,chapter,position,type,completed,stalled_here")
    );
    assert_eq!(
        out.lines().nth(2),
        Some("11,Lesson 11,Chapter 1,1,Video,2,1")
    );
    let (ok, out, err) = cli(&url, &["funnel", "--course", "5"]);
    assert!(
        ok && out.contains("3 enrolled, 1 stalled (14 days)"),
        "{out}{err}"
    );

    let (ok, out, err) = cli(&url, &["stalled", "--days", "2", "--format", "csv"]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[1]
            .starts_with("default,2,5,1002,s2@example.com,60.0,2,Lesson 11,2024-03-01T10:00:00Z,"),
        "{out}"
    );
    let (ok, out, err) = cli(&url, &["stalled", "--format", "json"]);
    assert!(ok, "{err}");
    let stalled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stalled.as_array().unwrap().len(), 1);
    assert_eq!(stalled[0]["last_lesson_id"], 11);
    let (ok, _, err) = cli(&url, &["stalled", "--days", "0"]);
    assert!(
        !ok && err.contains("--days must be between 1 and 3660"),
        "{err}"
    );

    let (ok, out, err) = cli(&url, &["student", "default", "1002"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("user 1002 of default: Stu Dent <s2@example.com>"),
        "{out}"
    );
    assert!(
        out.contains("Lesson 11") && out.contains("order.created"),
        "{out}"
    );
    let (ok, out, err) = cli(&url, &["student", "default", "1002", "--format", "json"]);
    assert!(ok, "{err}");
    let student: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        student,
        get_ok(&app, "/api/students/default/1002")
            .await
            .tap_days_inactive(&student)
    );
    let (ok, _, err) = cli(&url, &["student", "default", "42"]);
    assert!(
        !ok && err.contains("no event from source `default` names user 42"),
        "{err}"
    );
}

/// The API's answer with `days_inactive` as the CLI computed it a moment earlier.
trait TapDaysInactive {
    fn tap_days_inactive(self, like: &Value) -> Value;
}

impl TapDaysInactive for Value {
    fn tap_days_inactive(mut self, like: &Value) -> Value {
        for (mine, theirs) in self["enrollments"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .zip(like["enrollments"].as_array().unwrap())
        {
            mine["enrollment"]["learning"]["days_inactive"] =
                theirs["enrollment"]["learning"]["days_inactive"].clone();
        }
        self
    }
}

#[tokio::test]
async fn a_school_token_sees_only_its_school() {
    use enrollhook::config::{FileConfig, Secret, ServeConfig, Sources};
    let (dir, url) = crate::common::fresh_db();
    let file = FileConfig::parse(
        r#"
        [[source]]
        name = "school-a"
        secret = "key-a"
        api_token = "token-a"
        [[source]]
        name = "school-b"
        secret = "key-b"
        api_token = "token-b"
        "#,
    )
    .unwrap();
    let mut config = ServeConfig::new(url, None);
    config.sources = Sources::resolve(None, &file);
    config.api_token = Some(Secret::new("admin-token"));
    let app = crate::common::spawn_with(dir, config).await;
    for (school, key) in [("school-a", "key-a"), ("school-b", "key-b")] {
        let mut bodies = course_five();
        bodies.push(quiz("q1", 1002, 40.0, 1, "2024-02-01T10:00:00Z"));
        for body in bodies {
            let (status, reply) = app
                .deliver_to(
                    &format!("/webhooks/thinkific/{school}"),
                    &body,
                    Some(&enrollhook::thinkific::sign(key.as_bytes(), &body)),
                )
                .await;
            assert_eq!(status, 200, "{reply}");
        }
    }
    let get = |path: &str| {
        let req = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth("token-a");
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    for path in [
        "/api/courses/school-b/5/funnel",
        "/api/students/school-b/1002",
        "/api/enrollments?stalled_days=2&source=school-b",
        "/api/quizzes?source=school-b",
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, funnel) = get("/api/courses/school-a/5/funnel").await;
    assert_eq!((status, funnel["enrolled"].as_i64()), (200, Some(3)));
    let (_, stalled) = get("/api/enrollments?stalled_days=2").await;
    let sources: Vec<&str> = stalled["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec!["school-a", "school-a"]);
    let (_, quizzes) = get("/api/quizzes").await;
    assert_eq!(quizzes["items"].as_array().unwrap().len(), 1);
    assert_eq!(quizzes["items"][0]["source"], "school-a");
    let (_, courses) = get("/api/courses").await;
    assert!(
        courses["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["source"] == "school-a")
    );
}

/// SQLite's projection file re-derived from the log (deleted, or of an older
/// schema after an upgrade) holds the same lessons, learners and student index.
#[tokio::test]
async fn a_re_derived_sqlite_projection_has_the_same_learning() {
    use enrollhook::store::{NewEvent, SqliteStore, Store};
    let (dir, url) = crate::common::fresh_db();
    let path = dir.path().join("enrollhook.db");
    let events: Vec<NewEvent> = course_five()
        .iter()
        .map(|b| {
            let envelope = enrollhook::thinkific::parse(b, None).unwrap();
            NewEvent::from_envelope(
                "default",
                &envelope,
                String::from_utf8(b.clone()).unwrap(),
                Utc::now(),
            )
        })
        .collect();
    let answers = |store: std::sync::Arc<SqliteStore>| async move {
        let stalled = Stalled::days(2, Utc::now());
        let funnel = store.course_funnel("default", 5, &stalled).await.unwrap();
        let student = store.student("default", 1002, 100).await.unwrap();
        let seqs: Vec<i64> = student.events.iter().map(|e| e.seq).collect();
        (funnel, student.lessons, student.quizzes, seqs)
    };
    let store = std::sync::Arc::new(SqliteStore::open(&url, true).await.unwrap());
    store.append_batch(&events).await.unwrap();
    let before = answers(store.clone()).await;
    assert_eq!(before.3.len(), 5, "{before:?}");
    drop(store);
    let projection = enrollhook::store::sqlite_projector::projection_path(&path);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = projection.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let store = std::sync::Arc::new(SqliteStore::open(&url, true).await.unwrap());
    assert_eq!(answers(store.clone()).await, before);
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (check.learning, check.index_rows, check.courses),
        (0, 0, 0),
        "{check:?}"
    );
}

/// A PostgreSQL database of an earlier enrollhook (before migration 9) that
/// already holds lesson and quiz events: the migration derives them.
#[tokio::test]
async fn postgres_migration_9_derives_the_events_already_received() {
    use enrollhook::store::{NewEvent, PostgresStore, Store};
    let db = crate::common::pg::TestDb::create().await;
    let mut bodies = course_five();
    bodies.push(quiz("q1", 1002, 40.0, 1, "2024-02-01T10:00:00Z"));
    let events: Vec<NewEvent> = bodies
        .iter()
        .map(|b| {
            let envelope = enrollhook::thinkific::parse(b, None).unwrap();
            let body = String::from_utf8(b.clone()).unwrap();
            NewEvent::from_envelope("default", &envelope, body, Utc::now())
        })
        .collect();
    let store = PostgresStore::open(&db.url, true).await.unwrap();
    store.append_batch(&events).await.unwrap();
    let stalled = Stalled::days(2, Utc::now());
    let funnel = store.course_funnel("default", 5, &stalled).await.unwrap();
    let quizzes = store.quiz_stats(None, None).await.unwrap();
    assert_eq!(quizzes.len(), 1);
    drop(store);
    // Back to schema 8, events kept (the later migrations undone too, so
    // that they run again after 9). A database of schema 8 holds its bodies
    // as text: put them back uncompressed before undoing the compression.
    let mut conn = db.connect().await;
    for e in &events {
        sqlx::query(
            "UPDATE events SET body = $1, body_zstd = NULL, body_dict = NULL
             WHERE event_id = $2 AND topic = $3",
        )
        .bind(&e.body)
        .bind(&e.event_id)
        .bind(&e.topic)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::raw_sql(crate::common::pg::UNPARTITION_LOG)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "DROP INDEX outbox_due_by_subscription;
         CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
         DROP TABLE lesson_completions, course_lessons, learners, quiz_results, event_users,
             stall_buckets, course_learners;
         ALTER TABLE subscriptions DROP COLUMN subject, DROP COLUMN exchange,
             DROP COLUMN routing_key, DROP COLUMN stream, DROP COLUMN maxlen, DROP COLUMN filter,
             DROP COLUMN template;
         DROP TABLE alert_incidents;
         ALTER TABLE outbox DROP COLUMN traceparent;
         ALTER TABLE events DROP COLUMN body_dict, DROP COLUMN body_zstd;
         DROP TABLE body_dictionaries;
         DROP TABLE course_totals, course_expiries, activity_days;
         DROP FUNCTION course_totals_version();
         DROP INDEX enrollments_expiring;
         CREATE INDEX enrollments_enrolled_on
             ON enrollments ((COALESCE(created_at, activated_at, started_at)), source, course_id)
             INCLUDE (created_at, activated_at, started_at);
         CREATE INDEX enrollments_completed_on
             ON enrollments (completed_at, source, course_id) WHERE completed;
         DELETE FROM enrollhook_migrations WHERE version >= 9;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let store = PostgresStore::open(&db.url, true).await.unwrap();
    assert_eq!(
        store.course_funnel("default", 5, &stalled).await.unwrap(),
        funnel
    );
    assert_eq!(store.quiz_stats(None, None).await.unwrap(), quizzes);
    assert_eq!(
        store
            .student("default", 1002, 100)
            .await
            .unwrap()
            .events
            .len(),
        6
    );
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!((check.learning, check.index_rows), (0, 0), "{check:?}");
}

/// Course 8: 44 students, each a mix of last activity (long ago, either side
/// of the cutoffs of 1, 2 and 3 days, either side of noon five days ago),
/// expiry (none, passed an hour ago or long ago, in ten days), furthest lesson
/// (none, 20, 21, 22) and completion. `/api/courses` and the funnel count
/// stalled students from day buckets (see `stalled_counts`): every count must
/// equal the stalled list's, which reads one row per student.
async fn stalled_counts_equal_the_stalled_list(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    let now = Utc::now();
    let five_days_ago = (now - Duration::days(5)).date_naive();
    let at_hour = |h: u32| {
        five_days_ago
            .and_time(NaiveTime::from_hms_opt(h, 0, 0).unwrap())
            .and_utc()
    };
    let activities: Vec<DateTime<Utc>> = vec![
        now - Duration::days(40),
        now - Duration::days(10),
        at_hour(10),
        at_hour(14),
        now - Duration::days(3) - Duration::minutes(30),
        now - Duration::days(3) + Duration::minutes(30),
        now - Duration::days(2) - Duration::minutes(30),
        now - Duration::days(2) + Duration::minutes(30),
        now - Duration::days(1) - Duration::minutes(30),
        now - Duration::days(1) + Duration::minutes(30),
        now - Duration::hours(1),
    ];
    let expiries = [
        None,
        Some(now - Duration::hours(1)),
        Some(now - Duration::days(20)),
        Some(now + Duration::days(10)),
    ];
    let mut bodies = Vec::new();
    for (i, at) in activities.iter().enumerate() {
        for (j, expiry) in expiries.iter().enumerate() {
            let n = i * expiries.len() + j;
            let enrollment = 100 + n as i64;
            let completed = n.is_multiple_of(5);
            let (action, pct) = if completed {
                ("completed", "100.0")
            } else {
                ("progress", "40.0")
            };
            let mut e: Value = serde_json::from_slice(&enrollment_event(
                &format!("e{n}"),
                action,
                enrollment,
                8,
                pct,
                &at.to_rfc3339(),
            ))
            .unwrap();
            e["payload"]["expiry_date"] = json!(expiry.map(|t| t.to_rfc3339()));
            bodies.push(serde_json::to_vec(&e).unwrap());
            if !n.is_multiple_of(4) {
                let lesson_id = 20 + (n % 3) as i64;
                bodies.push(lesson(
                    &format!("l{n}"),
                    enrollment + 1000,
                    8,
                    Some(enrollment),
                    (lesson_id, 1, lesson_id),
                    &at.to_rfc3339(),
                ));
            }
        }
    }
    deliver_all(&app, &bodies).await;

    // Through the API: cutoffs of now − N days (inside a day, as always).
    for days in [1, 2, 3, 4, 14, 30] {
        let mut listed: Vec<Value> = Vec::new();
        let mut path = format!("/api/enrollments?stalled_days={days}&course_id=8&limit=7");
        loop {
            let page = get_ok(&app, &path).await;
            listed.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => path = format!("{path}&cursor={c}"),
                None => break,
            }
        }
        let mut by_lesson: std::collections::BTreeMap<Option<i64>, i64> = Default::default();
        for item in &listed {
            *by_lesson
                .entry(item["learning"]["last_lesson_id"].as_i64())
                .or_default() += 1;
        }
        let funnel = get_ok(
            &app,
            &format!("/api/courses/default/8/funnel?stalled_days={days}"),
        )
        .await;
        assert_eq!(funnel["stalled"], listed.len(), "stalled_days={days}");
        assert_eq!(
            funnel["stalled_before_first_lesson"],
            by_lesson.get(&None).copied().unwrap_or(0),
            "stalled_days={days}"
        );
        for l in funnel["lessons"].as_array().unwrap() {
            let id = l["lesson_id"].as_i64();
            assert_eq!(
                l["stalled_here"],
                by_lesson.get(&id).copied().unwrap_or(0),
                "stalled_days={days}, lesson {id:?}"
            );
        }
        if days == 14 {
            // `/api/courses` counts with the default of 14 days.
            let courses = get_ok(&app, "/api/courses").await;
            let course = courses["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["course_id"] == 8)
                .unwrap();
            assert_eq!(course["stalled"], listed.len(), "stalled_days={days}");
        }
    }

    // Through the store: a cutoff at noon five days ago, between the
    // students active at 10:00 and 14:00 that day.
    let store = app.store();
    let stalled = Stalled {
        before: at_hour(12),
        now,
    };
    let filter = StalledFilter {
        source: None,
        course_id: Some(8),
        stalled,
        order: StalledOrder::MostInactive,
    };
    let page = PageRequest {
        limit: 1000,
        cursor: None,
    };
    let listed = store.stalled_learners(&filter, &page).await.unwrap().items;
    let at_ten = listed
        .iter()
        .filter(|(_, l)| l.last_activity_at == Some(at_hour(10)))
        .count();
    assert!(at_ten > 0, "the cutoff's own day counts: {listed:?}");
    let funnel = store
        .course_funnel("default", 8, &stalled)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(funnel.stalled, listed.len() as i64);
    let mut stalled_here: i64 = funnel.stalled_before_first_lesson;
    for l in &funnel.lessons {
        let listed_here = listed
            .iter()
            .filter(|(_, r)| r.last_lesson_id == Some(l.lesson.lesson_id))
            .count() as i64;
        assert_eq!(l.stalled_here, listed_here, "lesson {}", l.lesson.lesson_id);
        stalled_here += l.stalled_here;
    }
    assert_eq!(stalled_here, listed.len() as i64);
    let courses = store.course_learning(None, &stalled).await.unwrap();
    assert_eq!(courses[0].stalled, listed.len() as i64);

    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!((check.learning, check.index_rows), (0, 0), "{check:?}");
}

/// An enrollment event that names neither its student nor its course (Thinkific's
/// payloads always do; a hand-made or truncated one may not): the learner row is
/// found through the stored enrollment (on PostgreSQL, locked only then, out of
/// the batch's first locks) and moves like any other, in any batch.
async fn an_event_without_its_student_still_moves_the_learner(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    deliver_all(
        &app,
        &[
            enrollment_event("e-created", "created", 61, 5, "0.0", "2024-02-01T00:00:00Z"),
            lesson(
                "l-1",
                1061,
                5,
                Some(61),
                (501, 1, 1),
                "2024-02-01T01:00:00Z",
            ),
        ],
    )
    .await;
    let mut completed: Value = serde_json::from_slice(&enrollment_event(
        "e-completed",
        "completed",
        61,
        5,
        "100.0",
        "2024-02-03T00:00:00Z",
    ))
    .unwrap();
    let payload = completed["payload"].as_object_mut().unwrap();
    payload.remove("user");
    payload.remove("course");
    payload.remove("course_id");
    payload.insert("completed_at".into(), json!("2024-02-03T00:00:00Z"));
    let body = serde_json::to_vec(&completed).unwrap();
    // Alone, and again beside other students' events in one burst (one batch).
    let others: Vec<Vec<u8>> = (0..6)
        .map(|n| {
            enrollment_event(
                &format!("o-{n}"),
                "created",
                70 + n,
                5,
                "0.0",
                "2024-02-03T00:00:00Z",
            )
        })
        .collect();
    let mut burst = vec![body.clone()];
    burst.extend(others);
    futures::future::join_all(burst.iter().map(|b| app.deliver(b))).await;
    assert_eq!(app.deliver(&body).await.0, 200, "a duplicate");

    let student = get_ok(&app, "/api/students/default/1061").await;
    let enrollment = &student["enrollments"][0]["enrollment"];
    assert_eq!(enrollment["completed"], json!(true), "{student:#}");
    let stalled = get_ok(&app, "/api/enrollments?stalled_days=1&course_id=5").await;
    assert!(
        stalled["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["user_id"] != json!(1061)),
        "a completed student is not stalled: {stalled:#}"
    );
    let check = app.store().rebuild_projection(true).await.unwrap();
    assert_eq!(
        (
            check.changed,
            check.removed,
            check.learning,
            check.index_rows,
            check.courses
        ),
        (0, 0, 0, 0, 0),
        "{check:?}"
    );
}

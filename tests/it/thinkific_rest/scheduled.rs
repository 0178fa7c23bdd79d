//! `serve --reconcile-every`: the backfill on a schedule for every source with
//! API credentials, resuming from the point stored in the database, each run's
//! report kept and shown (API, CLI), the webhooks checked, one run at a time
//! across instances sharing a PostgreSQL database.

use std::time::Duration as StdDuration;

use enrollhook::config::{ReconcileSource, Secret, ThinkificSettings};
use enrollhook::maintenance::reconcile::{self, Round, Target};

use super::*;

on_both_backends!(
    multi_thread: a_scheduled_reconciliation_runs_resumes_and_is_shown,
    a_school_token_sees_its_schools_reconciliations_only,
);

const HOOK_URL: &str = "https://hooks.example.com/webhooks/thinkific";

fn settings(base: &str) -> ThinkificSettings {
    ThinkificSettings {
        source: "default".parse().unwrap(),
        subdomain: Some(SUBDOMAIN.into()),
        api_key: Some(Secret::new(KEY)),
        access_token: None,
        api_base: base.into(),
    }
}

async fn a_scheduled_reconciliation_runs_resumes_and_is_shown(db: TestDatabase) {
    let items: Vec<Value> = (1..=6).map(|i| rest_enrollment(i).0).collect();
    let (api, base) = start_api(items).await;
    // Only one of the expected topics delivers here.
    api.webhooks.lock().unwrap().push(json!({
        "id": "1", "topic": "enrollment.created", "target_url": HOOK_URL, "status": "active"
    }));
    let target = settings(&base);
    let app = db
        .serve(|c| {
            c.reconcile_every = Some(StdDuration::from_secs(3600));
            c.reconcile = vec![ReconcileSource {
                thinkific: target.clone(),
                webhook_url: Some(HOOK_URL.into()),
            }];
        })
        .await;

    // The first round runs at start.
    let mut runs = Value::Null;
    for _ in 0..100 {
        let (code, page) = app.get("/api/reconciliations").await;
        assert_eq!(code, 200, "{page}");
        if !page["items"].as_array().unwrap().is_empty() {
            runs = page;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let run = &runs["items"][0];
    assert_eq!(run["source"], "default", "{runs}");
    assert_eq!(run["error"], Value::Null, "{run}");
    assert_eq!(
        run["report"]["reconciliation"]["total"]["missing"], 6,
        "{run}"
    );
    assert_eq!(
        run["report"]["summary"],
        "6 enrollments were missing, now added; 0 agreed"
    );
    assert_eq!(
        run["report"]["webhooks"]["registered"],
        json!(["enrollment.created"])
    );
    assert!(
        run["report"]["webhooks"]["missing"]
            .as_array()
            .unwrap()
            .contains(&json!("enrollment.progress")),
        "{run}"
    );
    let resume_from = run["resume_from"]
        .as_str()
        .expect("a resume point")
        .to_owned();

    // The next round resumes from the stored point, not from the beginning.
    let store = app.store();
    let round = reconcile::run_once(
        store.as_ref(),
        &[Target {
            source: target.source.clone(),
            client: target.client().unwrap(),
            webhook_url: None,
        }],
    )
    .await
    .unwrap();
    assert!(
        matches!(round, Round::Ran(ref ids) if ids.len() == 1),
        "{round:?}"
    );
    let asked = api.updated_after.lock().unwrap().clone();
    let resumed = enrollhook::thinkific::envelope::parse_timestamp(&resume_from).unwrap();
    assert_eq!(
        asked,
        [enrollhook::thinkific::backfill::updated_after_param(
            &resumed
        )],
        "the first round read everything, the second from the stored point"
    );
    let (_, page) = app.get("/api/reconciliations").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    assert!(
        page["items"][0]["id"].as_i64() > page["items"][1]["id"].as_i64(),
        "newest first"
    );

    // The CLI shows the same runs.
    let o = cli(&["reconciliations", "--database", &app.database_url]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("6 enrollments were missing, now added"),
        "{out}"
    );
    assert!(out.contains("topics missing"), "{out}");
}

/// Two instances on one PostgreSQL: while one reconciles, the other does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconciliation_at_a_time_across_instances() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let (api, base) = start_api((1..=3).map(|i| rest_enrollment(i).0).collect()).await;
    let first = enrollhook::store::open(&db.url, true).await.unwrap();
    let second = enrollhook::store::open(&db.url, true).await.unwrap();
    let targets = || {
        vec![Target {
            source: "default".parse().unwrap(),
            client: settings(&base).client().unwrap(),
            webhook_url: None,
        }]
    };

    let turn = first.reconciliation_turn().await.unwrap();
    assert!(turn.is_some(), "the first instance gets the turn");
    assert_eq!(
        reconcile::run_once(second.as_ref(), &targets())
            .await
            .unwrap(),
        Round::NotOurTurn
    );
    assert!(
        api.pages.lock().unwrap().is_empty(),
        "the second did not call Thinkific"
    );
    let page = PageRequest {
        limit: 10,
        cursor: None,
    };
    assert!(
        second
            .list_reconciliations(None, &page)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The turn ends with its holder: its connection closes, and PostgreSQL
    // releases the lock when its backend sees that, a moment later.
    drop(turn);
    let mut round = Round::NotOurTurn;
    for _ in 0..100 {
        round = reconcile::run_once(second.as_ref(), &targets())
            .await
            .unwrap();
        if round != Round::NotOurTurn {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(matches!(round, Round::Ran(_)), "{round:?}");
    assert_eq!(
        first
            .list_reconciliations(None, &page)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

async fn a_school_token_sees_its_schools_reconciliations_only(db: TestDatabase) {
    let file = enrollhook::config::FileConfig::parse(
        r#"
        [[source]]
        name = "school-a"
        secret = "key-a-0123456789"
        api_token = "token-a-0123456789"
        [[source]]
        name = "school-b"
        secret = "key-b-0123456789"
        api_token = "token-b-0123456789"
        "#,
    )
    .unwrap();
    let app = db
        .serve(|c| {
            c.sources = enrollhook::config::Sources::resolve(None, &file);
            c.api_token = Some(Secret::new("admin-token-0123456789"));
        })
        .await;
    let store = app.store();
    for source in ["school-a", "school-b", "school-a"] {
        store
            .insert_reconciliation(&enrollhook::store::NewReconciliation {
                source: source.into(),
                started_at: Utc::now(),
                finished_at: Utc::now(),
                resume_from: Some(t0()),
                report: json!({"summary": format!("{source} checked")}),
                error: None,
            })
            .await
            .unwrap();
    }
    let get = |token: &'static str, query: &'static str| {
        let (client, base) = (app.client.clone(), app.base.clone());
        async move {
            let r = client
                .get(format!("{base}/api/reconciliations{query}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let sources = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["source"].as_str().unwrap().to_owned())
            .collect()
    };
    let (code, page) = get("admin-token-0123456789", "").await;
    assert_eq!(code, 200);
    assert_eq!(sources(&page), ["school-a", "school-b", "school-a"]);
    let (code, page) = get("token-a-0123456789", "").await;
    assert_eq!(
        (code, sources(&page)),
        (200, vec!["school-a".to_owned(); 2])
    );
    let (code, _) = get("token-a-0123456789", "?source=school-b").await;
    assert_eq!(code, 403, "a school cannot ask for another's");
    let (code, page) = get("admin-token-0123456789", "?source=school-b&limit=1").await;
    assert_eq!((code, sources(&page)), (200, vec!["school-b".to_owned()]));
    // Pages follow the cursor, newest first.
    let first = store
        .list_reconciliations(
            None,
            &PageRequest {
                limit: 2,
                cursor: None,
            },
        )
        .await
        .unwrap();
    let rest = store
        .list_reconciliations(
            None,
            &PageRequest {
                limit: 2,
                cursor: first.next_cursor.clone(),
            },
        )
        .await
        .unwrap();
    let ids: Vec<i64> = first
        .items
        .iter()
        .chain(&rest.items)
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert!(rest.next_cursor.is_none());
    assert_eq!(
        store.reconciliation_resume_point("school-b").await.unwrap(),
        Some(t0())
    );
    assert_eq!(
        store.reconciliation_resume_point("school-c").await.unwrap(),
        None
    );
}

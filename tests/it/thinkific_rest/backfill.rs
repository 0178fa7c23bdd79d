//! `enrollhook thinkific backfill` on both backends: the whole story.

use super::*;

on_both_backends!(multi_thread: backfill_story);

/// The whole story on one database: backfill (through a 429 and a 500),
/// again (nothing new), webhooks newer and older than it, rebuild, forwarding.
async fn backfill_story(db: TestDatabase) {
    // SQLite: 3 pages of 250 (the last one short).
    let n = match db.backend {
        Backend::Sqlite => 600,
        Backend::Postgres => 520,
    };
    let database = db.url.as_str();
    let items: Vec<Value> = (1..=n).map(|i| rest_enrollment(i).0).collect();
    let (api, base) = start_api(items).await;

    // Subscriptions first: the backfill must reach only the one naming it.
    let store = enrollhook::store::open(database, true).await.unwrap();
    let mut subscription_ids = Vec::new();
    for topic in ["enrollment.*", "enrollment.backfill"] {
        let s = enrollhook::forward::SubscriptionInput {
            url: Some("https://crm.example.com/hooks".into()),
            topics: Some(vec![topic.into()]),
            ..Default::default()
        }
        .create(enrollhook::server::new_subscription_id(), Utc::now(), false)
        .unwrap();
        store.insert_subscription(&s).await.unwrap();
        subscription_ids.push(s.id);
    }
    drop(store);

    let o = backfill(&base, database, &[]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let pages = n.div_ceil(250);
    assert!(err.contains(&format!("page {pages}/{pages}:")), "{err}");
    assert!(err.contains("rate limit"), "the 429 was waited out: {err}");
    assert!(err.contains("answered 500"), "the 500 was retried: {err}");
    assert!(
        !err.contains(KEY) && !out.contains(KEY),
        "the key is never shown"
    );
    assert!(
        out.contains(&format!("{n} enrollments in {pages} pages"))
            && out.contains(&format!("{n} stored, 0 already known, 0 unusable")),
        "{out}"
    );
    // The newest updated_at listed (all are long before this run).
    let newest = ts(t0() + Duration::minutes(n as i64));
    assert!(
        out.contains(&format!("next time: --updated-after {}", &newest[..19])),
        "{out}"
    );
    assert!(api.rate_limited.load(Ordering::Relaxed) && api.failed.load(Ordering::Relaxed));
    assert!(
        api.pages
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, limit)| limit == 250),
        "every page asks for 250"
    );
    check_projection(&projection(database).await, n);

    // Again, asking for too large pages (clamped to Thinkific's 250): nothing new.
    api.pages.lock().unwrap().clear();
    let o = backfill(&base, database, &["--page-size", "1000"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains(&format!("0 stored, {n} already known")),
        "{out}"
    );
    assert!(
        api.pages
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, limit)| limit == 250)
    );

    // Resuming from the printed time asks only for what changed since: nothing.
    let o = backfill(&base, database, &["--updated-after", &newest]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("0 enrollments in 1 pages"), "{out}");

    // Webhooks: one newer than the backfill (wins), one older (does not).
    let newer = t0() + Duration::days(30);
    let older = t0() - Duration::days(30);
    import(
        database,
        &[
            webhook_line("20240401000000000000001", 1, newer, "80.0"),
            webhook_line("20240101000000000000002", 5, older, "10.0"),
        ],
    )
    .await;
    let rows = projection(database).await;
    assert_eq!(rows[&1001]["progress"], 80.0);
    assert_eq!(
        rows[&1001]["first_name"], "Exact",
        "the newer webhook's names"
    );
    assert_eq!(rows[&1001]["event_count"], 2);
    assert_eq!(
        rows[&1005]["progress"], 50.0,
        "the older webhook does not win"
    );
    assert_eq!(rows[&1005]["first_name"], "First5");
    assert_eq!(rows[&1005]["event_count"], 2);

    // An enrollment that changed in Thinkific since: a newer backfill event.
    {
        let mut all = api.enrollments.lock().unwrap();
        all[5]["percentage_completed"] = json!(0.75);
        all[5]["updated_at"] = json!(ts(t0() + Duration::days(60)));
    }
    let o = backfill(&base, database, &[]).await;
    let (out, _) = text(&o);
    assert!(
        out.contains(&format!("1 stored, {} already known", n - 1)),
        "{out}"
    );
    assert_eq!(projection(database).await[&1006]["progress"], 75.0);

    // The log is the truth: a rebuild derives exactly this projection.
    let o = cli(&["rebuild", "--check", "--database", database]).await;
    assert!(o.status.success(), "{:?}", text(&o));

    // Backfill events: n + 1 in the log, forwarded only to the subscription naming them.
    let store = enrollhook::store::open(database, false).await.unwrap();
    let page = store
        .list_events(
            &enrollhook::store::EventFilter {
                topic: Some("enrollment.backfill".into()),
                ..Default::default()
            },
            &PageRequest {
                limit: 1000,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), n as usize + 1);
    let deliveries = |id: String| {
        let store = store.clone();
        async move {
            store
                .list_deliveries(
                    &DeliveryFilter {
                        subscription_id: Some(id),
                        event_seq: None,
                        state: None,
                    },
                    &PageRequest {
                        limit: 1000,
                        cursor: None,
                    },
                )
                .await
                .unwrap()
                .items
                .len()
        }
    };
    // `enrollment.*` gets the two webhooks only; `enrollment.backfill` every backfill.
    assert_eq!(deliveries(subscription_ids[0].clone()).await, 2);
    assert_eq!(
        deliveries(subscription_ids[1].clone()).await,
        n as usize + 1
    );
    let completed = store
        .list_enrollments(
            &EnrollmentFilter {
                status: Some(enrollhook::projection::Status::Completed),
                ..Default::default()
            },
            &PageRequest {
                limit: 1000,
                cursor: None,
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(completed.items.len(), (n / 4) as usize);
}

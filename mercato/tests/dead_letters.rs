//! An event no handler can make sense of is retried, then parked in the consumer's dead
//! letters, never dropped; an admin lists it and can replay it.

mod support;

use mercato_kit::events::Envelope;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn a_poison_event_is_parked_listed_and_replayable_by_an_admin() {
    let s = Shop::open(&[]).await;
    let url = s.t.api("inventory", "/admin/dead-letters");
    problem(
        s.t.http
            .get(&url)
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(s.t.http.get(&url).send().await.unwrap(), 401).await;

    // An order.created whose payload is not an order.
    let poison = Envelope::new(
        "test",
        "order.created",
        "poison",
        &json!({"not": "an order"}),
    );
    s.t.stack
        .as_ref()
        .unwrap()
        .bus
        .publish(&poison)
        .await
        .unwrap();
    let parked = eventually(WAIT, || async {
        let v: Value =
            s.t.http
                .get(&url)
                .bearer_auth(&s.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let items = v["items"].as_array().unwrap().clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["event_id"], poison.event_id.to_string());
    assert_eq!(parked[0]["consumer"], "inventory");
    assert!(
        parked[0]["attempts"].as_i64().unwrap() > 1,
        "retried before parking"
    );

    // The saga goes on behind it.
    let p = s.product(500, 3).await;
    let id = s.place(&p, 1, "pm_card_visa").await;
    s.status_becomes(&id, "PAID").await;

    // Replaying it fails again, visibly, and it stays listed for a fix.
    let replay = format!("{url}/{}/replay", parked[0]["id"].as_str().unwrap());
    let res =
        s.t.http
            .post(&replay)
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(problem(res, 409).await["code"], "replay_failed");
    problem(
        s.t.http
            .post(format!("{url}/{}/replay", uuid::Uuid::now_v7()))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let res =
        s.t.http
            .post(&replay)
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    s.t.stop().await;
}

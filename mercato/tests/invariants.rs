//! The invariants of ARCHITECTURE.md, checked across the real services over HTTP: after a bus
//! redelivers every event, and after every step of random interleavings of orders, payments
//! that succeed, fail or hang, cancels, expiries, restocks, fulfilment and redeliveries.

mod support;

use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

/// Everything observable about the shop, to compare before and after.
async fn snapshot(s: &Shop, orders: &[String], products: &[String]) -> Value {
    let mut o = Vec::new();
    for id in orders {
        let order = s.get_order(id).await;
        let h: Value =
            s.t.http
                .get(s.t.api("order", &format!("/orders/{id}/events")))
                .bearer_auth(&s.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        o.push(json!({"status": order["status"], "history": h["items"].as_array().unwrap().len(), "payment": s.payment(id).await}));
    }
    let mut p = Vec::new();
    for id in products {
        p.push(s.stock(id).await);
    }
    json!({"orders": o, "stock": p, "psp": s.psp_stats().await, "events": s.t.bus().await.all().await.len()})
}

async fn caught_up(s: &Shop) {
    let bus = s.t.bus().await;
    let done = tokio::time::timeout(WAIT, async {
        loop {
            if bus.lag().await.iter().all(|(_, behind)| *behind == 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "consumers did not catch up: {:?}",
        bus.lag().await
    );
}

/// Checks invariants 1, 3 and 4 for these products and orders; `Err` says which failed.
async fn check(s: &Shop, products: &[String], orders: &[String]) -> Result<(), String> {
    let mut committed: BTreeMap<String, i64> = BTreeMap::new();
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    for id in orders {
        let o = s.get_order(id).await;
        let status = o["status"].as_str().unwrap().to_owned();
        let pay = s.payment(id).await;
        let pay_status = pay
            .as_ref()
            .map(|p| p["status"].as_str().unwrap().to_owned());
        for line in o["items"].as_array().unwrap() {
            let (pid, q) = (
                line["product_id"].as_str().unwrap().to_owned(),
                line["quantity"].as_i64().unwrap(),
            );
            match status.as_str() {
                "CONFIRMED" | "PAID" | "PROCESSING" => *held.entry(pid).or_default() += q,
                "FULFILLED" | "REFUNDED" => *committed.entry(pid).or_default() += q,
                _ => {}
            }
        }
        // 3: no money without goods, no goods without money.
        match (status.as_str(), pay_status.as_deref()) {
            ("PENDING", _) => return Err(format!("order {id} still PENDING")),
            ("CONFIRMED", Some("PENDING")) => {} // waiting for the processor's webhook
            ("CONFIRMED", other) => {
                return Err(format!("order {id} CONFIRMED with payment {other:?}"))
            }
            ("PAID" | "PROCESSING", Some("AUTHORIZED")) => {}
            ("FULFILLED", Some("CAPTURED")) => {}
            ("REFUNDED", Some("REFUNDED")) => {}
            ("CANCELLED", None | Some("VOIDED") | Some("FAILED") | Some("REFUNDED")) => {}
            (o, p) => return Err(format!("order {id} {o} with payment {p:?}")),
        }
        if pay_status.as_deref() == Some("CAPTURED") && status != "FULFILLED" {
            return Err(format!("captured without goods: {id}"));
        }
    }
    // 1: stock is conserved and never oversold; what is reserved is what live orders hold.
    for pid in products {
        let st = s.stock(pid).await;
        let (on_hand, reserved, available) = (
            st["on_hand"].as_i64().unwrap(),
            st["reserved"].as_i64().unwrap(),
            st["available"].as_i64().unwrap(),
        );
        if available < 0 || available != on_hand - reserved {
            return Err(format!(
                "{pid}: on_hand {on_hand} reserved {reserved} available {available}"
            ));
        }
        if reserved != held.get(pid).copied().unwrap_or(0) {
            return Err(format!(
                "{pid}: reserved {reserved} but live orders hold {:?}",
                held.get(pid)
            ));
        }
        let ledger: Value =
            s.t.http
                .get(s.t.api("inventory", &format!("/inventory/{pid}/ledger?limit=100")))
                .bearer_auth(&s.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let entries = ledger["items"].as_array().unwrap();
        let sum = |k: &str| entries.iter().map(|e| e[k].as_i64().unwrap()).sum::<i64>();
        if sum("on_hand_delta") != on_hand || sum("reserved_delta") != reserved {
            return Err(format!("{pid}: ledger does not add up to the stock"));
        }
        let commits: i64 = entries
            .iter()
            .filter(|e| e["kind"] == "commit")
            .map(|e| -e["on_hand_delta"].as_i64().unwrap())
            .sum();
        if commits != committed.get(pid).copied().unwrap_or(0) {
            return Err(format!(
                "{pid}: committed {commits} but fulfilled orders took {:?}",
                committed.get(pid)
            ));
        }
    }
    Ok(())
}

async fn holds(s: &Shop, products: &[String], orders: &[String]) {
    let mut last = String::new();
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            match check(s, products, orders).await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "invariant broken: {last}");
}

#[tokio::test]
async fn every_event_delivered_again_changes_nothing() {
    let s = Shop::open(&[]).await;
    let p = s.product(1200, 10).await;
    let mut orders = Vec::new();
    for card in [
        "pm_card_visa",
        "pm_card_visa",
        "pm_card_chargeDeclined",
        "pm_card_visa",
    ] {
        orders.push(s.place(&p, 1, card).await);
    }
    s.status_becomes(&orders[0], "PAID").await;
    s.status_becomes(&orders[1], "PAID").await;
    s.status_becomes(&orders[2], "CANCELLED").await;
    s.status_becomes(&orders[3], "PAID").await;
    assert_eq!(
        s.seller_post(&orders[0], "fulfill").await.status(),
        StatusCode::OK
    );
    let res =
        s.t.http
            .post(s.t.api("order", &format!("/orders/{}/cancel", orders[1])))
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.payment_becomes(&orders[0], "CAPTURED").await;
    s.payment_becomes(&orders[1], "VOIDED").await;
    holds(&s, std::slice::from_ref(&p), &orders).await;
    caught_up(&s).await;
    let before = snapshot(&s, &orders, std::slice::from_ref(&p)).await;

    // The bus forgets every acknowledgement and delivers the whole log again.
    s.t.bus().await.rewind_all_consumers().await;
    caught_up(&s).await;
    let after = snapshot(&s, &orders, std::slice::from_ref(&p)).await;
    assert_eq!(before, after);
    holds(&s, std::slice::from_ref(&p), &orders).await;
    s.t.stop().await;
}

#[derive(Debug, Clone)]
enum Step {
    Order { quantity: i64, card: &'static str },
    Cancel(usize),
    Fulfill(usize),
    Settle(usize, bool),
    Restock(i64),
    Redeliver,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1i64..=3, prop::sample::select(vec!["pm_card_visa", "pm_card_chargeDeclined", "pm_card_pending", "pm_card_processingError"]))
            .prop_map(|(quantity, card)| Step::Order { quantity, card }),
        2 => (0usize..8).prop_map(Step::Cancel),
        2 => (0usize..8).prop_map(Step::Fulfill),
        1 => ((0usize..8), any::<bool>()).prop_map(|(i, ok)| Step::Settle(i, ok)),
        1 => (1i64..=4).prop_map(Step::Restock),
        1 => Just(Step::Redeliver),
    ]
}

async fn run_steps(steps: Vec<Step>) {
    // A short reservation TTL lets pending payments expire within a case.
    let s = Shop::open(&[("MERCATO_RESERVATION_TTL_SECS", "2")]).await;
    let p = s.product(700, 4).await;
    let products = vec![p.clone()];
    let mut orders: Vec<String> = Vec::new();
    for step in steps {
        match step {
            Step::Order { quantity, card } => {
                let res = s
                    .order(json!([{"product_id": p, "quantity": quantity}]), card)
                    .await;
                match res.status() {
                    StatusCode::CREATED => orders.push(
                        res.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    ),
                    StatusCode::CONFLICT => {}
                    other => panic!("order answered {other}"),
                }
            }
            Step::Cancel(i) if !orders.is_empty() => {
                let id = &orders[i % orders.len()];
                let res =
                    s.t.http
                        .post(s.t.api("order", &format!("/orders/{id}/cancel")))
                        .bearer_auth(&s.customer)
                        .send()
                        .await
                        .unwrap();
                assert!(
                    matches!(res.status().as_u16(), 200 | 409),
                    "{}",
                    res.status()
                );
            }
            Step::Fulfill(i) if !orders.is_empty() => {
                let id = &orders[i % orders.len()];
                let res = s.seller_post(id, "fulfill").await;
                assert!(
                    matches!(res.status().as_u16(), 200 | 409),
                    "{}",
                    res.status()
                );
            }
            Step::Settle(i, ok) if !orders.is_empty() => {
                let id = &orders[i % orders.len()];
                if let Some(pay) = s
                    .payment(id)
                    .await
                    .filter(|p| p["status"] == "PENDING" && p["provider_ref"].is_string())
                {
                    let outcome = if ok { "succeeded" } else { "failed" };
                    let url = format!(
                        "{}/v1/test/payments/{}/settle",
                        s.t.base("psp-mock"),
                        pay["provider_ref"].as_str().unwrap()
                    );
                    let res =
                        s.t.http
                            .post(url)
                            .json(&json!({"outcome": outcome}))
                            .send()
                            .await
                            .unwrap();
                    assert!(
                        matches!(res.status().as_u16(), 200 | 409),
                        "{}",
                        res.status()
                    );
                }
            }
            Step::Restock(n) => {
                let res =
                    s.t.http
                        .put(s.t.api("inventory", &format!("/inventory/{p}")))
                        .bearer_auth(&s.seller)
                        .json(&json!({"restock": n}))
                        .send()
                        .await
                        .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
            }
            Step::Redeliver => s.t.bus().await.rewind_all_consumers().await,
            _ => {}
        }
        holds(&s, &products, &orders).await;
    }
    s.t.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 0, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_interleavings_keep_the_invariants(steps in prop::collection::vec(step(), 4..12)) {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(run_steps(steps));
    }
}

//! The cart's key-value store against a real database: compare-and-set, expiry, lifetimes,
//! concurrent writers, writes inside a transaction, and a checkout meeting its order's events
//! in either order.
//!
//! Runs on a fresh SQLite file by default. Set `MERCATO_TEST_DATABASE_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`) to run the same tests on PostgreSQL, each in a
//! schema of its own.

use mercato_cart::domain::{cart_key, Cart, Limits, Line, ProductInfo};
use mercato_cart::service;
use mercato_cart::store::{get_typed, Clock, Expect, KvStore, SqlKv};
use mercato_kit::db::Db;
use mercato_kit::ids::{Currency, OrderId, ProductId, UserId};
use mercato_kit::time::now_us;
use serde_json::json;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct TestDb {
    db: Db,
    _dir: Option<tempfile::TempDir>,
}

async fn test_db() -> TestDb {
    if let Ok(url) = std::env::var("MERCATO_TEST_DATABASE_URL") {
        let schema = format!("cart_test_{}", uuid::Uuid::new_v4().simple());
        let db = Db::connect(&url, &schema, 4, &mercato_cart::migrations())
            .await
            .unwrap();
        return TestDb { db, _dir: None };
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cart.db?mode=rwc", dir.path().display());
    let db = mercato_cart::connect(&url, 4).await.unwrap();
    TestDb {
        db,
        _dir: Some(dir),
    }
}

/// A clock the test moves by hand, so expiry is tested without waiting.
#[derive(Clone)]
struct HandClock(Arc<AtomicI64>);

impl HandClock {
    fn new() -> HandClock {
        HandClock(Arc::new(AtomicI64::new(now_us())))
    }
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
    }
    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Arc::new(move || t.load(Ordering::SeqCst))
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn compare_and_set_refuses_writers_that_read_an_older_version() {
    let t = test_db().await;
    let kv = SqlKv::new(t.db.clone());
    let first = kv
        .put("k", &json!({"n": 1}), Expect::Absent, 60 * SECOND)
        .await
        .unwrap()
        .expect("an absent key is created");
    // A second creator lost the race.
    assert!(kv
        .put("k", &json!({"n": 99}), Expect::Absent, 60 * SECOND)
        .await
        .unwrap()
        .is_none());
    let second = kv
        .put(
            "k",
            &json!({"n": 2}),
            Expect::Version(first.version),
            60 * SECOND,
        )
        .await
        .unwrap()
        .expect("the current version wins");
    assert_ne!(first.version, second.version);
    // A writer that read the first version is refused, and changes nothing.
    assert!(kv
        .put(
            "k",
            &json!({"n": 3}),
            Expect::Version(first.version),
            60 * SECOND
        )
        .await
        .unwrap()
        .is_none());
    let e = kv.get("k").await.unwrap().unwrap();
    assert_eq!(e.value, json!({"n": 2}));
    assert_eq!(e.version, second.version);
    // Deleting compares too.
    assert!(!kv.delete("k", Some(first.version)).await.unwrap());
    assert!(kv.delete("k", Some(second.version)).await.unwrap());
    assert!(kv.get("k").await.unwrap().is_none());
    assert!(!kv.delete("k", None).await.unwrap());
    // Written again after the delete: a version it never had, so the old readers still lose.
    let again = kv
        .put("k", &json!({"n": 4}), Expect::Absent, 60 * SECOND)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(again.version, first.version);
    assert_ne!(again.version, second.version);
    assert!(kv
        .put(
            "k",
            &json!({}),
            Expect::Version(second.version),
            60 * SECOND
        )
        .await
        .unwrap()
        .is_none());
    // Keys are independent.
    assert!(kv.get("other").await.unwrap().is_none());
    t.db.close().await;
}

#[tokio::test]
async fn an_expired_key_is_gone_for_every_operation_and_purged() {
    let t = test_db().await;
    let clock = HandClock::new();
    let kv = SqlKv::with_clock(t.db.clone(), clock.clock());
    let w = kv
        .put("cart", &json!({"a": 1}), Expect::Absent, 2 * SECOND)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.expires_at, clock.now() + 2_000_000);
    kv.put("lasting", &json!(1), Expect::Absent, 3600 * SECOND)
        .await
        .unwrap()
        .unwrap();
    clock.advance(SECOND);
    assert!(kv.get("cart").await.unwrap().is_some());
    clock.advance(SECOND);
    // Exactly at its expiry it is gone.
    assert!(kv.get("cart").await.unwrap().is_none());
    assert!(kv
        .put(
            "cart",
            &json!({"a": 2}),
            Expect::Version(w.version),
            60 * SECOND
        )
        .await
        .unwrap()
        .is_none());
    assert!(!kv.delete("cart", None).await.unwrap());
    // The purge deletes only what expired.
    assert_eq!(kv.purge_expired().await.unwrap(), 1);
    assert_eq!(kv.purge_expired().await.unwrap(), 0);
    assert!(kv.get("lasting").await.unwrap().is_some());

    // An expired key that was not purged yet is taken over as if absent.
    kv.put("again", &json!(1), Expect::Absent, SECOND)
        .await
        .unwrap()
        .unwrap();
    clock.advance(2 * SECOND);
    let fresh = kv
        .put("again", &json!(2), Expect::Absent, SECOND)
        .await
        .unwrap()
        .expect("the expired row does not block a new key");
    assert_eq!(kv.get("again").await.unwrap().unwrap().value, json!(2));
    assert_eq!(fresh.expires_at, clock.now() + 1_000_000);
    t.db.close().await;
}

#[tokio::test]
async fn every_write_extends_the_life_and_reading_does_not() {
    let t = test_db().await;
    let clock = HandClock::new();
    let kv = SqlKv::with_clock(t.db.clone(), clock.clock());
    let ttl = 10 * SECOND;
    let w = kv
        .put("cart", &json!(1), Expect::Absent, ttl)
        .await
        .unwrap()
        .unwrap();
    clock.advance(8 * SECOND);
    let w = kv
        .put("cart", &json!(2), Expect::Version(w.version), ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.expires_at, clock.now() + 10_000_000);
    // Past the first expiry, alive thanks to the second write.
    clock.advance(4 * SECOND);
    let e = kv.get("cart").await.unwrap().expect("extended");
    assert_eq!(e.expires_at, w.expires_at, "reading does not extend");
    clock.advance(5 * SECOND);
    assert!(kv.get("cart").await.unwrap().is_some());
    clock.advance(SECOND);
    assert!(kv.get("cart").await.unwrap().is_none());
    t.db.close().await;
}

#[tokio::test]
async fn concurrent_writers_retrying_on_conflict_lose_nothing() {
    let t = test_db().await;
    let kv: Arc<dyn KvStore> = Arc::new(SqlKv::new(t.db.clone()));
    let writers = 8;
    let each = 5;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for i in 0..each {
                    loop {
                        let (mut items, expect) = match kv.get("tabs").await.unwrap() {
                            Some(e) => (
                                serde_json::from_value::<Vec<String>>(e.value).unwrap(),
                                Expect::Version(e.version),
                            ),
                            None => (Vec::new(), Expect::Absent),
                        };
                        items.push(format!("{w}-{i}"));
                        let written = kv
                            .put("tabs", &json!(items), expect, 60 * SECOND)
                            .await
                            .unwrap();
                        if written.is_some() {
                            break;
                        }
                        conflicts += 1;
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let items: Vec<String> =
        serde_json::from_value(kv.get("tabs").await.unwrap().unwrap().value).unwrap();
    assert_eq!(items.len(), writers * each, "{items:?}");
    for w in 0..writers {
        for i in 0..each {
            assert!(items.contains(&format!("{w}-{i}")), "lost {w}-{i}");
        }
    }
    t.db.close().await;
}

#[tokio::test]
async fn writes_inside_a_transaction_commit_or_roll_back_with_it() {
    let t = test_db().await;
    let kv = SqlKv::new(t.db.clone());
    let mut tx = t.db.begin().await.unwrap();
    {
        let inside = kv.within(&mut tx);
        inside
            .put("k", &json!("tx"), Expect::Absent, 60 * SECOND)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inside.get("k").await.unwrap().unwrap().value, json!("tx"));
    }
    tx.rollback().await.unwrap();
    assert!(kv.get("k").await.unwrap().is_none());

    let mut tx = t.db.begin().await.unwrap();
    {
        let inside = kv.within(&mut tx);
        let w = inside
            .put("k", &json!(1), Expect::Absent, 60 * SECOND)
            .await
            .unwrap()
            .unwrap();
        inside
            .put("k", &json!(2), Expect::Version(w.version), 60 * SECOND)
            .await
            .unwrap()
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(kv.get("k").await.unwrap().unwrap().value, json!(2));
    t.db.close().await;
}

// ---------------------------------------------------------------------------------------------
// A checkout and its order's events, on the store.

const TTL: Duration = Duration::from_secs(3600);

fn usd() -> ProductInfo {
    ProductInfo {
        name: "Widget".into(),
        price_cents: 100,
        currency: Currency::USD,
        active: true,
    }
}

async fn cart_of(kv: &dyn KvStore, customer: UserId) -> Option<Cart> {
    get_typed::<Cart>(kv, &cart_key(customer))
        .await
        .unwrap()
        .map(|(c, _, _)| c)
}

/// Sets the customer's cart to hold these lines, as their own changes would (what the cart
/// remembers of settled checkouts stays).
async fn put_cart(kv: &dyn KvStore, customer: UserId, lines: &[(ProductId, i64)]) -> Cart {
    let key = cart_key(customer);
    let (mut cart, expect) = match get_typed::<Cart>(kv, &key).await.unwrap() {
        Some((cart, version, _)) => (cart, Expect::Version(version)),
        None => (Cart::default(), Expect::Absent),
    };
    cart.lines.clear();
    cart.currency = None;
    for (p, q) in lines {
        cart.add(*p, Some(&usd()), *q, Limits { max_lines: 50 })
            .unwrap();
    }
    kv.put(&key, &serde_json::to_value(&cart).unwrap(), expect, TTL)
        .await
        .unwrap()
        .unwrap();
    cart
}

#[tokio::test]
async fn a_paid_checkout_leaves_the_cart_once_whichever_comes_first() {
    let t = test_db().await;
    let kv = SqlKv::new(t.db.clone());
    let (a, b) = (ProductId::new(), ProductId::new());

    // Recorded, then paid: the ordered lines leave, what was added since stays.
    let customer = UserId::new();
    let cart = put_cart(&kv, customer, &[(a, 2), (b, 1)]).await;
    let order = OrderId::new();
    service::record_checkout(&kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    put_cart(&kv, customer, &[(a, 5), (b, 1)]).await;
    service::order_paid(&kv, order, TTL).await.unwrap();
    let left = cart_of(&kv, customer).await.unwrap();
    assert_eq!(
        left.lines,
        vec![Line {
            product_id: a,
            quantity: 3
        }]
    );
    // Redelivered: nothing more leaves.
    service::order_paid(&kv, order, TTL).await.unwrap();
    assert_eq!(cart_of(&kv, customer).await.unwrap().lines, left.lines);

    // Paid before the checkout recorded it: the checkout settles when it records.
    let customer = UserId::new();
    let cart = put_cart(&kv, customer, &[(a, 1)]).await;
    let order = OrderId::new();
    service::order_paid(&kv, order, TTL).await.unwrap();
    assert_eq!(cart_of(&kv, customer).await.unwrap(), cart, "not yet");
    service::record_checkout(&kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    assert!(cart_of(&kv, customer).await.unwrap().is_empty());
    // A retried checkout of the same order settles nothing twice.
    put_cart(&kv, customer, &[(a, 4)]).await;
    service::record_checkout(&kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    service::order_paid(&kv, order, TTL).await.unwrap();
    assert_eq!(
        cart_of(&kv, customer).await.unwrap().quantity_of(a),
        Some(4)
    );

    // Cancelled: the cart stays for another try, and a later redelivery of anything changes
    // nothing.
    let customer = UserId::new();
    let cart = put_cart(&kv, customer, &[(b, 2)]).await;
    let order = OrderId::new();
    service::record_checkout(&kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    service::order_cancelled(&kv, order).await.unwrap();
    service::order_cancelled(&kv, order).await.unwrap();
    assert_eq!(cart_of(&kv, customer).await.unwrap(), cart);
    assert!(kv
        .get(&mercato_cart::domain::checkout_key(order))
        .await
        .unwrap()
        .is_none());
    t.db.close().await;
}

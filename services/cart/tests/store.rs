//! The cart's key-value store against real stores: compare-and-set, expiry, lifetimes,
//! concurrent writers, writes inside a transaction, a checkout meeting its order's events in
//! either order, and keyed changes applied once whatever became of their transaction.
//!
//! Every test runs on both stores, the same test function twice (`on_sql::*`, `on_redis::*`):
//! - SQL: a fresh SQLite file by default; set `MERCATO_TEST_DATABASE_URL` (for example
//!   `postgres://postgres@127.0.0.1:5432/postgres`) to run on PostgreSQL, each test in a schema
//!   of its own.
//! - Redis: ignored unless run with `--include-ignored` and `MERCATO_TEST_REDIS_URL` (for
//!   example `redis://127.0.0.1:6379`), as CI's backend tier does; each test keeps its keys under
//!   a prefix of its own and deletes them when done.
//!
//! The SQL store's clock is moved by hand. Redis's cannot be: there the lifetimes are short and
//! a test waits for the server's clock to reach the moment it checks.

use mercato_cart::catalog::{self, Catalog};
use mercato_cart::domain::{
    cart_key, request_id, Cart, Change, Limits, Line, ProductInfo, Products,
};
use mercato_cart::orders::{self, OrderAnswer, OrderService};
use mercato_cart::redis_store::RedisKv;
use mercato_cart::service::{self, Carts, Settings};
use mercato_cart::store::{get_typed, Clock, Expect, KvStore, SqlKv};
use mercato_kit::db::Db;
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{Currency, OrderId, ProductId, UserId};
use mercato_kit::redis as redis_store;
use mercato_kit::testing::{backend, RedisKeys, TestDb};
use mercato_kit::time::{now_us, Micros};
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cart service's database for one test.
async fn test_db() -> (TestDb, Db) {
    let t = TestDb::new("cart");
    let db = t.open(4, &mercato_cart::migrations()).await;
    (t, db)
}

/// A clock the test moves by hand, so expiry is tested without waiting. Like a real clock it
/// never reads the same twice (the SQL store's versions follow the clock): each reading moves
/// it on by a microsecond.
#[derive(Clone)]
struct HandClock(Arc<AtomicI64>);

impl HandClock {
    fn new() -> HandClock {
        HandClock(Arc::new(AtomicI64::new(now_us())))
    }
    fn now(&self) -> Micros {
        self.0.load(Ordering::SeqCst)
    }
    fn set_at_least(&self, t: Micros) {
        self.0.fetch_max(t, Ordering::SeqCst);
    }
    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Arc::new(move || t.fetch_add(1, Ordering::SeqCst))
    }
}

const SECOND: Duration = Duration::from_secs(1);

fn micros(d: Duration) -> Micros {
    d.as_micros() as Micros
}

/// The clock a store's keys expire by.
enum Time {
    /// The SQL store's, moved by hand.
    Hand(HandClock),
    /// The Redis server's, which a test can only wait for.
    Server(ConnectionManager),
}

async fn server_now(conn: &ConnectionManager) -> Micros {
    let (secs, us): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    secs * 1_000_000 + us
}

impl Time {
    async fn now(&self) -> Micros {
        match self {
            Time::Hand(c) => c.now(),
            Time::Server(conn) => server_now(conn).await,
        }
    }

    /// Until `t` has come: a key that expires at `t` is gone from then on.
    async fn reach(&self, t: Micros) {
        match self {
            Time::Hand(c) => c.set_at_least(t),
            Time::Server(conn) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let now = server_now(conn).await;
                    if now >= t {
                        return;
                    }
                    assert!(Instant::now() < deadline, "the server's clock stopped");
                    // Waiting for a moment to come, not for another task: how long is known.
                    let left = Duration::from_micros((t - now) as u64);
                    tokio::time::sleep(left.min(Duration::from_millis(50))).await;
                }
            }
        }
    }

    /// The tests' unit of lifetime: on a real clock short, yet long enough for a read to
    /// happen well within it.
    fn unit(&self) -> Duration {
        match self {
            Time::Hand(_) => SECOND,
            Time::Server(_) => Duration::from_millis(400),
        }
    }

    /// How far below `now + ttl` a written expiry may be: Redis keeps whole milliseconds.
    fn slack(&self) -> Micros {
        match self {
            Time::Hand(_) => 0,
            Time::Server(_) => 1000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sql,
    Redis,
}

/// A store under test, with the clock its keys expire by, and the cart service's SQL database
/// (idempotency records and transactions live there whichever store holds the carts).
struct Store {
    kind: Kind,
    kv: Arc<dyn KvStore>,
    time: Time,
    db: Db,
    _db: TestDb,
    _keys: Option<RedisKeys>,
}

impl Store {
    async fn sql() -> Store {
        let (t, db) = test_db().await;
        let clock = HandClock::new();
        Store {
            kind: Kind::Sql,
            kv: Arc::new(SqlKv::with_clock(db.clone(), clock.clock())),
            time: Time::Hand(clock),
            db,
            _db: t,
            _keys: None,
        }
    }

    async fn redis() -> Store {
        let url = backend("MERCATO_TEST_REDIS_URL");
        let prefix = format!("test:cart:{}:", uuid::Uuid::new_v4().simple());
        let conn = redis_store::connect(&url).unwrap();
        redis_store::ping(&conn)
            .await
            .expect("MERCATO_TEST_REDIS_URL reachable");
        let (t, db) = test_db().await;
        Store {
            kind: Kind::Redis,
            kv: Arc::new(RedisKv::new(conn.clone(), &prefix)),
            time: Time::Server(conn),
            db,
            _db: t,
            _keys: Some(RedisKeys::new(&url, prefix)),
        }
    }

    /// Checks a written expiry: `ttl` after the write, which happened between `before` and
    /// `after`.
    fn assert_expiry(&self, expires_at: Micros, before: Micros, after: Micros, ttl: Duration) {
        let (low, high) = (
            before + micros(ttl) - self.time.slack(),
            after + micros(ttl),
        );
        assert!(
            (low..=high).contains(&expires_at),
            "expires at {expires_at}, not within {low}..={high}"
        );
    }

    async fn close(self) {
        self.db.close().await;
    }
}

/// Each test function, once per store.
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod on_sql {
            $(
                #[tokio::test]
                async fn $test() {
                    let s = super::Store::sql().await;
                    super::$test(&s).await;
                    s.close().await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test]
                #[ignore = "needs MERCATO_TEST_REDIS_URL (CI's backend tier)"]
                async fn $test() {
                    let s = super::Store::redis().await;
                    super::$test(&s).await;
                    s.close().await;
                }
            )*
        }
    };
}

on_both_stores!(
    compare_and_set_refuses_writers_that_read_an_older_version,
    an_expired_key_is_gone_for_every_operation,
    every_write_extends_the_life_and_reading_does_not,
    concurrent_writers_retrying_on_conflict_lose_nothing,
    writes_inside_a_transaction_follow_it_only_on_the_sql_store,
    a_paid_checkout_leaves_the_cart_once_whichever_comes_first,
    keyed_changes_apply_once_whatever_became_of_their_transaction,
);

async fn compare_and_set_refuses_writers_that_read_an_older_version(s: &Store) {
    let kv = &*s.kv;
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
}

async fn an_expired_key_is_gone_for_every_operation(s: &Store) {
    let kv = &*s.kv;
    let u = s.time.unit();
    let before = s.time.now().await;
    let w = kv
        .put("cart", &json!({"a": 1}), Expect::Absent, 2 * u)
        .await
        .unwrap()
        .unwrap();
    s.assert_expiry(w.expires_at, before, s.time.now().await, 2 * u);
    kv.put("lasting", &json!(1), Expect::Absent, 3600 * SECOND)
        .await
        .unwrap()
        .unwrap();
    s.time.reach(w.expires_at - micros(u)).await;
    assert!(kv.get("cart").await.unwrap().is_some());
    // From its expiry on, it is gone.
    s.time.reach(w.expires_at).await;
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
    // The SQL store's purge deletes only what expired; Redis dropped it already.
    let purged = kv.purge_expired().await.unwrap();
    assert_eq!(purged, if s.kind == Kind::Sql { 1 } else { 0 });
    assert_eq!(kv.purge_expired().await.unwrap(), 0);
    assert!(kv.get("lasting").await.unwrap().is_some());

    // An expired key (not purged yet, on SQL) is taken over as if absent.
    let old = kv
        .put("again", &json!(1), Expect::Absent, u)
        .await
        .unwrap()
        .unwrap();
    s.time.reach(old.expires_at).await;
    let before = s.time.now().await;
    let fresh = kv
        .put("again", &json!(2), Expect::Absent, u)
        .await
        .unwrap()
        .expect("the expired key does not block a new one");
    s.assert_expiry(fresh.expires_at, before, s.time.now().await, u);
    assert_ne!(fresh.version, old.version);
    assert_eq!(kv.get("again").await.unwrap().unwrap().value, json!(2));
}

async fn every_write_extends_the_life_and_reading_does_not(s: &Store) {
    let kv = &*s.kv;
    let u = s.time.unit();
    let ttl = 4 * u;
    let first = kv
        .put("cart", &json!(1), Expect::Absent, ttl)
        .await
        .unwrap()
        .unwrap();
    s.time.reach(first.expires_at - micros(u)).await;
    let before = s.time.now().await;
    let second = kv
        .put("cart", &json!(2), Expect::Version(first.version), ttl)
        .await
        .unwrap()
        .unwrap();
    s.assert_expiry(second.expires_at, before, s.time.now().await, ttl);
    // Past the first expiry, alive thanks to the second write.
    s.time.reach(first.expires_at).await;
    let e = kv.get("cart").await.unwrap().expect("extended");
    assert_eq!(e.expires_at, second.expires_at, "reading does not extend");
    s.time.reach(second.expires_at - micros(u)).await;
    assert!(kv.get("cart").await.unwrap().is_some());
    s.time.reach(second.expires_at).await;
    assert!(kv.get("cart").await.unwrap().is_none());
}

async fn concurrent_writers_retrying_on_conflict_lose_nothing(s: &Store) {
    let writers = 8;
    let each = 5;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let kv = s.kv.clone();
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
        serde_json::from_value(s.kv.get("tabs").await.unwrap().unwrap().value).unwrap();
    assert_eq!(items.len(), writers * each, "{items:?}");
    for w in 0..writers {
        for i in 0..each {
            assert!(items.contains(&format!("{w}-{i}")), "lost {w}-{i}");
        }
    }
}

/// The SQL store writes in the transaction it is given; Redis writes at once, whatever the
/// transaction does (the use cases are built for that: see the last test).
async fn writes_inside_a_transaction_follow_it_only_on_the_sql_store(s: &Store) {
    let mut tx = s.db.begin().await.unwrap();
    {
        let inside = s.kv.within(&mut tx);
        inside
            .put("k", &json!("tx"), Expect::Absent, 60 * SECOND)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inside.get("k").await.unwrap().unwrap().value, json!("tx"));
    }
    tx.rollback().await.unwrap();
    let after_rollback = s.kv.get("k").await.unwrap().map(|e| e.value);
    match s.kind {
        Kind::Sql => assert_eq!(after_rollback, None, "rolled back with the transaction"),
        Kind::Redis => assert_eq!(after_rollback, Some(json!("tx")), "written at once"),
    }

    let mut tx = s.db.begin().await.unwrap();
    {
        let inside = s.kv.within(&mut tx);
        let w = inside
            .put("k2", &json!(1), Expect::Absent, 60 * SECOND)
            .await
            .unwrap()
            .unwrap();
        inside
            .put("k2", &json!(2), Expect::Version(w.version), 60 * SECOND)
            .await
            .unwrap()
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(s.kv.get("k2").await.unwrap().unwrap().value, json!(2));
}

// ---------------------------------------------------------------------------------------------
// The use cases on the store.

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

async fn a_paid_checkout_leaves_the_cart_once_whichever_comes_first(s: &Store) {
    let kv = &*s.kv;
    let (a, b) = (ProductId::new(), ProductId::new());

    // Recorded, then paid: the ordered lines leave, what was added since stays.
    let customer = UserId::new();
    let cart = put_cart(kv, customer, &[(a, 2), (b, 1)]).await;
    let order = OrderId::new();
    service::record_checkout(kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    put_cart(kv, customer, &[(a, 5), (b, 1)]).await;
    service::order_paid(kv, order, TTL).await.unwrap();
    let left = cart_of(kv, customer).await.unwrap();
    assert_eq!(
        left.lines,
        vec![Line {
            product_id: a,
            quantity: 3
        }]
    );
    // Redelivered: nothing more leaves.
    service::order_paid(kv, order, TTL).await.unwrap();
    assert_eq!(cart_of(kv, customer).await.unwrap().lines, left.lines);

    // Paid before the checkout recorded it: the checkout settles when it records.
    let customer = UserId::new();
    let cart = put_cart(kv, customer, &[(a, 1)]).await;
    let order = OrderId::new();
    service::order_paid(kv, order, TTL).await.unwrap();
    assert_eq!(cart_of(kv, customer).await.unwrap(), cart, "not yet");
    service::record_checkout(kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    assert!(cart_of(kv, customer).await.unwrap().is_empty());
    // A retried checkout of the same order settles nothing twice.
    put_cart(kv, customer, &[(a, 4)]).await;
    service::record_checkout(kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    service::order_paid(kv, order, TTL).await.unwrap();
    assert_eq!(cart_of(kv, customer).await.unwrap().quantity_of(a), Some(4));

    // Cancelled: the cart stays for another try, and a later redelivery of anything changes
    // nothing.
    let customer = UserId::new();
    let cart = put_cart(kv, customer, &[(b, 2)]).await;
    let order = OrderId::new();
    service::record_checkout(kv, order, customer, &cart.lines, TTL)
        .await
        .unwrap();
    service::order_cancelled(kv, order).await.unwrap();
    service::order_cancelled(kv, order).await.unwrap();
    assert_eq!(cart_of(kv, customer).await.unwrap(), cart);
    assert!(kv
        .get(&mercato_cart::domain::checkout_key(order))
        .await
        .unwrap()
        .is_none());
}

/// A catalog that sells everything, and can play another tab adding a product to a cart while
/// it is being asked.
struct TabbedCatalog {
    kv: Arc<dyn KvStore>,
    other_tab_adds: Mutex<Option<(UserId, ProductId)>>,
}

#[async_trait::async_trait]
impl Catalog for TabbedCatalog {
    async fn products(
        &self,
        ids: &[ProductId],
        _: Option<&RequestContext>,
    ) -> Result<Products, catalog::Unavailable> {
        let other_tab = self.other_tab_adds.lock().unwrap().take();
        if let Some((customer, product)) = other_tab {
            let (mut cart, version, _) = get_typed::<Cart>(&*self.kv, &cart_key(customer))
                .await
                .unwrap()
                .unwrap();
            cart.add(product, Some(&usd()), 1, Limits { max_lines: 50 })
                .unwrap();
            let value = serde_json::to_value(&cart).unwrap();
            self.kv
                .put(&cart_key(customer), &value, Expect::Version(version), TTL)
                .await
                .unwrap()
                .unwrap();
        }
        Ok(ids.iter().map(|id| (*id, Some(usd()))).collect())
    }
}

struct NoOrders;

#[async_trait::async_trait]
impl OrderService for NoOrders {
    async fn place(
        &self,
        _: &Value,
        _: &str,
        _: &str,
        _: &RequestContext,
    ) -> Result<OrderAnswer, orders::Unavailable> {
        Err(orders::Unavailable("not in these tests".into()))
    }
}

async fn keyed_changes_apply_once_whatever_became_of_their_transaction(s: &Store) {
    let catalog = Arc::new(TabbedCatalog {
        kv: s.kv.clone(),
        other_tab_adds: Mutex::new(None),
    });
    let carts = Carts::new(
        s.db.clone(),
        s.kv.clone(),
        catalog.clone(),
        Arc::new(NoOrders),
        Settings {
            ttl: TTL,
            limits: Limits { max_lines: 50 },
        },
    );
    let ctx = RequestContext {
        request_id: "req".into(),
        correlation_id: "corr".into(),
        traceparent: String::new(),
        client_ip: None,
    };
    let (customer, a, b) = (UserId::new(), ProductId::new(), ProductId::new());
    let add = |quantity| Change::Add {
        product_id: a,
        quantity,
    };
    let quantity = |cart: Option<Cart>, p| cart.and_then(|c| c.quantity_of(p));

    // The idempotency record's commit fails (its transaction is dropped), and the client
    // retries with the same key: on SQL the add went with the transaction, on Redis the cart
    // remembers it; either way it is there once.
    let first = request_id("key-1", "fingerprint");
    let (tx, _) = carts
        .change(customer, add(2), Some(&first), &ctx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let (tx, shown) = carts
        .change(customer, add(2), Some(&first), &ctx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(quantity(cart_of(&*s.kv, customer).await, a), Some(2));
    assert_eq!(shown.cart.items[0].quantity, 2);

    // Another key is another change; so is each change without one.
    let other = request_id("key-2", "fingerprint");
    let (tx, _) = carts
        .change(customer, add(3), Some(&other), &ctx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for _ in 0..2 {
        let (tx, _) = carts.change(customer, add(1), None, &ctx).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(quantity(cart_of(&*s.kv, customer).await, a), Some(7));

    // Another tab adds a product while this change asks the catalog: the change looks that
    // one up too before it writes anything, and lands once.
    *catalog.other_tab_adds.lock().unwrap() = Some((customer, b));
    let third = request_id("key-3", "fingerprint");
    let (tx, shown) = carts
        .change(customer, add(1), Some(&third), &ctx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let cart = cart_of(&*s.kv, customer).await;
    assert_eq!(quantity(cart.clone(), a), Some(8));
    assert_eq!(quantity(cart, b), Some(1));
    assert!(
        shown.cart.items.iter().all(|l| l.available),
        "every line priced"
    );
    assert_eq!(shown.cart.total_cents, 900);
}

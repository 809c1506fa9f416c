//! Chaos on the distributed backends, with a crash in the middle: every service is its own
//! `mercato serve` process on PostgreSQL and NATS JetStream (and Redis when given), inventory
//! fails 30% of its requests and answers slowly, the order service drops 20% of its answers
//! after committing them, and halfway through the load the order process is killed with
//! SIGKILL and started again. Clients retry with the same Idempotency-Key until they get a
//! whole answer. Once chaos is switched off, every accepted order completes, none twice, no
//! card is charged twice and no unit is sold twice; the services' own chaos counters show the
//! faults really happened.
//!
//! Needs `MERCATO_TEST_DATABASE_URL` and `MERCATO_TEST_NATS_URL` (`MERCATO_TEST_REDIS_URL` is
//! used when set); CI's backend tier sets them. With `MERCATO_TEST_KAFKA_BROKERS` the events go
//! through Kafka instead (.ci/kafka). Without a bus the test fails, saying which is missing.
//!
//! One replica per service (the replica story is `replicas.rs`'s): the services call each other
//! directly, clients come through the gateway.

#[path = "support/procs.rs"]
mod procs;
mod support;

use procs::{free_port, login, ready, serve, shop_services, stocked_product, Proc};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{eventually, ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD};

/// Orders placed under chaos, `CLIENTS` at a time; every third is for the scarce product.
const ORDERS: usize = 30;
const CLIENTS: usize = 6;
const CUSTOMERS: usize = 4;
/// The order process dies once this many orders have been accepted.
const KILL_AFTER: usize = 10;
const PLENTY: i64 = 1000;
/// Fewer units than the orders that want them: some must be refused or cancelled.
const SCARCE: i64 = 5;
/// How long one client keeps trying one order (through the kill and the breakers).
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

fn inventory_chaos() -> Value {
    // Half the requests 3 to 5 s late (the order service's pre-check gives up after 3 s), 30%
    // failed: the pre-check's breaker opens and orders are accepted with a deferred check.
    // Not every request late: chaos decides to fail a request after its delay, so a caller
    // that gives up during the delay would never meet a single injected error.
    json!({"error_rate": 0.3, "latency_ms": 3000, "latency_max_ms": 5000, "latency_rate": 0.5})
}

fn order_chaos() -> Value {
    json!({"partial_failure_rate": 0.2})
}

/// The admin chaos route of `service`, through the gateway.
fn chaos_url(gw: &str, service: &str) -> String {
    if service == "gateway" {
        format!("{gw}/api/v1/admin/chaos")
    } else {
        format!("{gw}/api/v1/admin/{service}/chaos")
    }
}

async fn set_chaos(http: &Client, gw: &str, admin: &str, service: &str, profile: &Value) {
    // Through the gateway, whose breaker for a service that just came back may still be open.
    eventually(Duration::from_secs(30), || async {
        let r = http
            .put(chaos_url(gw, service))
            .bearer_auth(admin)
            .json(profile)
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::OK {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        assert_eq!(v["enabled"], true, "{service}: {v}");
        Some(())
    })
    .await;
}

async fn chaos_events(http: &Client, base: &str, kind: &str) -> u64 {
    support::metric(http, base, "chaos_events_total", &[("kind", kind)]).await as u64
}

/// What the clients went through, counted.
#[derive(Default)]
struct Tally {
    attempts: AtomicUsize,
    /// A head and then a broken body, or a 201 whose body was not the order.
    broken: AtomicUsize,
    /// 502: the gateway lost the service's answer (dropped after the commit, or the process
    /// died) or could not reach it.
    bad_gateway: AtomicUsize,
    /// Other 5xx, or 429 (the gateway's breaker for a service open, a timeout).
    unavailable: AtomicUsize,
    /// No answer at all (refused or reset connections).
    unreachable: AtomicUsize,
    /// 409 `idempotency_key_in_use`: the first request with the key still held it.
    in_use: AtomicUsize,
}

enum Outcome {
    /// 201 and the order.
    Accepted(Value),
    /// 409 `insufficient_stock`: the pre-check saw too little; the customer stops there.
    Refused,
}

fn problem_type(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Places one order as a careful client does: whatever goes wrong short of a final answer (a
/// broken body, a 5xx, a 429, no connection, the key still in flight), it asks again with the
/// same key and body, backing off a little, until it has a whole 201 or a 409 for stock.
async fn place(
    http: &Client,
    gw: &str,
    token: &str,
    key: &str,
    product: &str,
    tally: &Tally,
) -> Outcome {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut backoff = Duration::from_millis(50);
    loop {
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        let res = http
            .post(format!("{gw}/api/v1/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(
                &json!({"items": [{"product_id": product, "quantity": 1}], "payment_method": "pm_card_visa"}),
            )
            .send()
            .await;
        match res {
            Err(_) => {
                tally.unreachable.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Err(_) => {
                        tally.broken.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(body) if status == StatusCode::CREATED => {
                        match serde_json::from_slice::<Value>(&body) {
                            Ok(order) if order["id"].is_string() => {
                                return Outcome::Accepted(order)
                            }
                            _ => {
                                tally.broken.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(body) if status == StatusCode::CONFLICT => {
                        let kind = problem_type(&body);
                        if kind.ends_with("/insufficient_stock") {
                            return Outcome::Refused;
                        }
                        assert!(
                            kind.ends_with("/idempotency_key_in_use"),
                            "{key}: 409 {}",
                            String::from_utf8_lossy(&body)
                        );
                        tally.in_use.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) if status == StatusCode::BAD_GATEWAY => {
                        tally.bad_gateway.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_)
                        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS =>
                    {
                        tally.unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(body) => panic!(
                        "{key}: unexpected {status} {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
            }
        }
        assert!(Instant::now() < deadline, "order {key} never answered");
        // Pacing between retries (not waiting for a condition): a little jitter so the clients
        // do not knock in step.
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_millis(800));
    }
}

#[derive(Clone, Debug)]
struct Placed {
    key: String,
    customer: usize,
    product: String,
    order: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs MERCATO_TEST_DATABASE_URL and MERCATO_TEST_NATS_URL or MERCATO_TEST_KAFKA_BROKERS (CI's backend and Kafka tiers)"]
async fn chaos_and_a_killed_order_process_lose_nothing_and_duplicate_nothing() {
    let pg = mercato_kit::testing::backend("MERCATO_TEST_DATABASE_URL");
    // Events on Kafka when the run names brokers (.ci/kafka), else on NATS.
    let nats = match std::env::var("MERCATO_TEST_KAFKA_BROKERS") {
        Ok(brokers) if !brokers.is_empty() => String::new(),
        _ => mercato_kit::testing::backend("MERCATO_TEST_NATS_URL"),
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (admin_url, db_url) = support::fresh_pg_database(&pg).await;
    let prefix = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);

    // The processes: every service on a port of its own, each knowing the others directly.
    let ports: BTreeMap<&str, u16> = mercato::stack::SERVICES
        .iter()
        .map(|s| (*s, free_port()))
        .collect();
    let url = |s: &str| format!("http://127.0.0.1:{}", ports[s]);
    // 6 s: longer than inventory's injected latency (so a slow answer is still an answer),
    // short enough that a key claimed by the killed process is free again soon (its lease is
    // this plus 5 s).
    let (mut env, _redis_keys) = procs::shared_env(&db_url, &nats, &prefix, dir.path(), 6000);
    env.extend([
        // The pre-check's breaker tries inventory again after 2 s, not 10: more of the
        // chaos reaches it, and it is closed again soon after the chaos ends.
        (
            "MERCATO_INVENTORY_BREAKER_RESET_MS".to_owned(),
            "2000".to_owned(),
        ),
        ("MERCATO_PSP_URL".to_owned(), url("psp-mock")),
        (
            "MERCATO_PSP_WEBHOOK_URL".to_owned(),
            format!("{}/api/v1/payments/webhook", url("payment")),
        ),
    ]);
    for s in shop_services().filter(|s| *s != "gateway") {
        env.push((format!("MERCATO_{}_URL", s.to_ascii_uppercase()), url(s)));
    }
    let http = Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut procs: BTreeMap<&str, Proc> = BTreeMap::new();
    procs.insert(
        "psp-mock",
        serve("psp-mock", 0, ports["psp-mock"], &env, dir.path()),
    );
    // Auth first: it creates the signing key and the admin the others rely on.
    procs.insert("auth", serve("auth", 0, ports["auth"], &env, dir.path()));
    ready(&http, &url("auth")).await;
    for s in shop_services().filter(|s| *s != "auth") {
        procs.insert(s, serve(s, 0, ports[s], &env, dir.path()));
    }
    for s in mercato::stack::SERVICES {
        ready(&http, &url(s)).await;
    }
    let gw = url("gateway");

    // A seller with two products: one with plenty of stock, one with too little.
    let admin = login(&http, &gw, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let register = |email: String| {
        let http = http.clone();
        let gw = gw.clone();
        async move {
            let res = http
                .post(format!("{gw}/api/v1/auth/register"))
                .json(&json!({"email": email, "password": PASSWORD, "name": "Chaos Shopper"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            let id = res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            (id, login(&http, &gw, &email, PASSWORD).await)
        }
    };
    let (seller_id, _) = register(format!("seller-{prefix}@test.local")).await;
    let res = http
        .patch(format!("{gw}/api/v1/admin/users/{seller_id}"))
        .bearer_auth(&admin)
        .json(&json!({"role": "SELLER"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seller = login(&http, &gw, &format!("seller-{prefix}@test.local"), PASSWORD).await;
    let plenty = stocked_product(&http, &gw, &seller, "CHAOS-0", 1900, PLENTY).await;
    let scarce = stocked_product(&http, &gw, &seller, "CHAOS-1", 1901, SCARCE).await;
    let products = [plenty.clone(), scarce.clone()];
    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        customers.push(register(format!("shopper-{i}-{prefix}@test.local")).await.1);
    }

    // Before the chaos, one order of each product goes through the whole saga: the order
    // service has learned both products (it answers 422 until their events arrive) and the
    // saga works. They count with the rest below.
    let tally = Arc::new(Tally::default());
    let mut placed = Vec::new();
    for p in &products {
        let key = format!("{prefix}-warmup-{p}");
        let order = eventually(Duration::from_secs(30), || async {
            let r = http
                .post(format!("{gw}/api/v1/orders"))
                .bearer_auth(&customers[0])
                .header("Idempotency-Key", &key)
                .json(&json!({"items": [{"product_id": p, "quantity": 1}], "payment_method": "pm_card_visa"}))
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::CREATED).then_some(r.json::<Value>().await.ok()?)
        })
        .await;
        let id = order["id"].as_str().unwrap().to_owned();
        eventually(Duration::from_secs(30), || async {
            let o: Value = http
                .get(format!("{gw}/api/v1/orders/{id}?wait=5"))
                .bearer_auth(&customers[0])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (o["status"] == "PAID").then_some(())
        })
        .await;
        placed.push(Placed {
            key,
            customer: 0,
            product: p.clone(),
            order,
        });
    }

    // Chaos on, through the gateway.
    set_chaos(&http, &gw, &admin, "inventory", &inventory_chaos()).await;
    set_chaos(&http, &gw, &admin, "order", &order_chaos()).await;
    let chaos_on = Instant::now();

    // A shopper keeps looking at the stock while the chaos lasts, waiting out slow answers:
    // inventory's injected errors reach someone whole (the pre-check gives up on slow answers
    // before inventory decides to fail them), and the summary shows what a shopper saw.
    let browsing = Arc::new(AtomicBool::new(true));
    let browser = {
        let (http, gw, plenty, browsing) =
            (http.clone(), gw.clone(), plenty.clone(), browsing.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(250));
            let mut answers = BTreeMap::<String, usize>::new();
            while browsing.load(Ordering::SeqCst) {
                pace.tick().await;
                let outcome = match http
                    .get(format!("{gw}/api/v1/inventory/{plenty}"))
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(_) => "no answer".to_owned(),
                };
                *answers.entry(outcome).or_default() += 1;
            }
            answers
        })
    };

    // The load: CLIENTS clients, each order with its own key, retried until answered.
    let accepted = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(tokio::sync::Mutex::new(
        Vec::<(usize, Option<Placed>)>::new(),
    ));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, gw, tally, accepted, next, results, customers, plenty, scarce, prefix) = (
            http.clone(),
            gw.clone(),
            tally.clone(),
            accepted.clone(),
            next.clone(),
            results.clone(),
            customers.clone(),
            plenty.clone(),
            scarce.clone(),
            prefix.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= ORDERS {
                    return;
                }
                let customer = i % CUSTOMERS;
                let product = if i % 3 == 0 { &scarce } else { &plenty };
                let key = format!("{prefix}-order-{i}");
                let outcome = place(&http, &gw, &customers[customer], &key, product, &tally).await;
                let placed = match outcome {
                    Outcome::Accepted(order) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        Some(Placed {
                            key,
                            customer,
                            product: product.clone(),
                            order,
                        })
                    }
                    Outcome::Refused => {
                        assert_eq!(product, &scarce, "{key}: refused for stock on {product}");
                        None
                    }
                };
                results.lock().await.push((i, placed));
            }
        }));
    }

    // In the middle: the order process dies (SIGKILL, requests and events in flight) and is
    // started again on the same port; its chaos lived in memory, so it is set again.
    eventually(Duration::from_secs(60), || async {
        (accepted.load(Ordering::SeqCst) >= KILL_AFTER).then_some(())
    })
    .await;
    let partial_before_kill = chaos_events(&http, &url("order"), "partial_failure").await;
    let order_proc = procs.get_mut("order").unwrap();
    order_proc.kill();
    let killed_after = accepted.load(Ordering::SeqCst);
    order_proc.restart();
    ready(&http, &url("order")).await;
    set_chaos(&http, &gw, &admin, "order", &order_chaos()).await;

    for c in clients {
        c.await.unwrap();
    }
    let mut results = results.lock().await.clone();
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(results.len(), ORDERS);
    let refused = results.iter().filter(|(_, p)| p.is_none()).count();
    placed.extend(results.into_iter().filter_map(|(_, p)| p));

    // Order drops a fifth of its answers at random, and the process killed in the middle
    // forgets what it counted before `partial_before_kill` was read: now and then the clients
    // met no dropped answer at all (the CI run of 2026-12-02 did). The retry of a lost answer
    // is what this test is for, so more orders go in, still under chaos, until one is dropped.
    let mut extra = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while partial_before_kill + chaos_events(&http, &url("order"), "partial_failure").await == 0 {
        assert!(
            Instant::now() < deadline,
            "order dropped no answer in {extra} more orders"
        );
        let key = format!("{prefix}-more-{extra}");
        extra += 1;
        match place(&http, &gw, &customers[0], &key, &plenty, &tally).await {
            Outcome::Accepted(order) => placed.push(Placed {
                key,
                customer: 0,
                product: plenty.clone(),
                order,
            }),
            Outcome::Refused => panic!("{key}: refused for stock on {plenty}"),
        }
    }

    // Inventory's faults are counted when it injects them; keep the chaos (and the shopper)
    // until both kinds have shown up, then switch it off everywhere.
    let inventory = url("inventory");
    eventually(Duration::from_secs(30), || async {
        let errors = chaos_events(&http, &inventory, "error").await;
        let latency = chaos_events(&http, &inventory, "latency").await;
        (errors > 0 && latency > 0).then_some(())
    })
    .await;
    browsing.store(false, Ordering::SeqCst);
    let browsed = browser.await.unwrap();
    for s in shop_services() {
        eventually(Duration::from_secs(30), || async {
            let r = http
                .delete(chaos_url(&gw, s))
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::NO_CONTENT).then_some(())
        })
        .await;
        let v: Value = http
            .get(chaos_url(&gw, s))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["enabled"], false, "{s}: {v}");
    }
    let chaos_secs = chaos_on.elapsed().as_secs();

    // Chaos happened: inventory failed and delayed requests, order dropped answers it had
    // committed, and the pre-check fell back to deferring the check.
    let inv_errors = chaos_events(&http, &inventory, "error").await;
    let inv_latency = chaos_events(&http, &inventory, "latency").await;
    let partial = partial_before_kill + chaos_events(&http, &url("order"), "partial_failure").await;
    assert!(
        inv_errors > 0 && inv_latency > 0,
        "inventory chaos injected nothing"
    );
    assert!(partial > 0, "order dropped no answer");
    let deferred = placed
        .iter()
        .filter(|p| p.order["stock_check"] == "deferred")
        .count();
    assert!(
        deferred > 0,
        "no order was accepted with a deferred stock check"
    );

    // Every accepted order reaches its end: PAID, or (for the scarce product only) CANCELLED
    // because its reservation found no stock.
    let mut finals = BTreeMap::new();
    for p in &placed {
        let id = p.order["id"].as_str().unwrap().to_owned();
        let o = eventually(Duration::from_secs(60), || async {
            let o: Value = http
                .get(format!("{gw}/api/v1/orders/{id}?wait=5"))
                .bearer_auth(&customers[p.customer])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let status = o["status"].as_str()?;
            (status != "PENDING" && status != "CONFIRMED").then_some(o)
        })
        .await;
        let ok = o["status"] == "PAID"
            || (p.product == scarce
                && o["status"] == "CANCELLED"
                && o["cancel_reason"] == "out_of_stock");
        assert!(ok, "order of key {} ended {o}", p.key);
        finals.insert(id, o);
    }
    let paid = |product: &str| {
        placed
            .iter()
            .filter(|p| {
                p.product == product && finals[p.order["id"].as_str().unwrap()]["status"] == "PAID"
            })
            .count() as i64
    };
    let (paid_plenty, paid_scarce) = (paid(&plenty), paid(&scarce));
    let accepted_scarce = placed.iter().filter(|p| p.product == scarce).count() as i64;

    // One order per key, no more: each customer has exactly the orders its keys got.
    for (c, token) in customers.iter().enumerate() {
        let mine: BTreeSet<String> = placed
            .iter()
            .filter(|p| p.customer == c)
            .map(|p| p.order["id"].as_str().unwrap().to_owned())
            .collect();
        let listed: Value = http
            .get(format!("{gw}/api/v1/orders?limit=100"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let listed: BTreeSet<String> = listed["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{listed}"))
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, mine, "customer {c}: one order per key, no more");
    }

    // One payment per paid order, none for a cancelled one, one authorization each at the
    // processor: nobody was charged twice.
    for (id, o) in &finals {
        let payments: Value = http
            .get(format!("{gw}/api/v1/payments?order_id={id}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = payments["items"].as_array().unwrap();
        if o["status"] == "PAID" {
            assert_eq!(items.len(), 1, "one payment for {id}: {payments}");
            assert_eq!(items[0]["status"], "AUTHORIZED", "{payments}");
        } else {
            assert!(
                items.is_empty(),
                "no payment for cancelled {id}: {payments}"
            );
        }
    }
    let stats: Value = http
        .get(format!("{}/v1/test/stats", url("psp-mock")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["authorizations"],
        paid_plenty + paid_scarce,
        "one authorization per paid order: {stats}"
    );

    // Stock: what paid orders hold is reserved, and no more units than there are. Every unit
    // of the scarce product went to an order (nothing lost to a stuck reservation).
    for (product, on_hand, held) in [
        (&plenty, PLENTY, paid_plenty),
        (&scarce, SCARCE, paid_scarce),
    ] {
        let stock: Value = http
            .get(format!("{gw}/api/v1/inventory/{product}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stock["on_hand"], on_hand, "{stock}");
        assert_eq!(stock["reserved"], held, "{stock}");
        assert_eq!(stock["available"], on_hand - held, "{stock}");
    }
    assert!(paid_scarce <= SCARCE, "oversold: {paid_scarce} of {SCARCE}");
    assert_eq!(
        paid_scarce,
        accepted_scarce.min(SCARCE),
        "{accepted_scarce} scarce orders accepted, {paid_scarce} paid"
    );

    println!(
        "chaos_distributed: {} of {ORDERS} (+{extra} until an answer was dropped) orders accepted under chaos ({deferred} with a deferred stock check), \
         {refused} refused for stock, in {} attempts ({} broken bodies, {} 502, {} other 5xx/429, {} without an answer, \
         {} key in use); \
         PAID {}, CANCELLED out_of_stock {}; chaos {chaos_secs} s: inventory {inv_latency} delayed, \
         {inv_errors} failed, order {partial} answers dropped; order killed after {killed_after} accepted; \
         shopper saw {browsed:?}; {} s in all",
        placed.len() - products.len(),
        tally.attempts.load(Ordering::Relaxed),
        tally.broken.load(Ordering::Relaxed),
        tally.bad_gateway.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        tally.unreachable.load(Ordering::Relaxed),
        tally.in_use.load(Ordering::Relaxed),
        paid_plenty + paid_scarce,
        accepted_scarce - paid_scarce,
        started.elapsed().as_secs(),
    );

    drop(procs);
    support::drop_pg_database(&admin_url, &db_url).await;
    if !nats.is_empty() {
        let client = async_nats::connect(&nats).await.unwrap();
        let js = async_nats::jetstream::new(client);
        for s in support::nats_streams(&js, &prefix).await {
            let _ = js.delete_stream(&s).await;
        }
    }
}

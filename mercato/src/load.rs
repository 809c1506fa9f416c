//! `mercato load`: drives a running Mercato through its public API the way shoppers do and
//! measures it. It is the benchmark the saga's speed is judged by.
//!
//! Two ways to load the shop:
//! - **Closed loop** (`--orders N --concurrency C`): C shoppers, each placing an order and
//!   waiting for it to be PAID (`?wait=`) before the next; every order's accepted→PAID time is
//!   measured. It shows latency at a given concurrency, but slows down with the shop, so it
//!   hides queueing.
//! - **Open loop** (`--rate R --duration D`): actions are sent at their intended times (i/R
//!   after the start) whatever the answers do, over a fixed number of keep-alive connections
//!   (`--connections`, like wrk's `-c`); latency is measured from the intended time, so time
//!   spent waiting for a connection or behind a slow answer counts (no coordinated omission).
//!   Following every order to PAID with a held request would cost one request per order and
//!   wake every waiter on every change, so accepted→PAID is measured exactly on a stated
//!   sample (`--sample-every`, held `?wait=`), and every order's fate is counted in bulk by
//!   reading the backlog lists (`GET /orders?status=PENDING|CONFIRMED`, pages of 100) a few
//!   times a second: an order of this run that has left both lists is final.
//!
//! Scenarios (`--scenario`): `order` posts `/orders`; `checkout` fills a cart and posts
//! `/cart/checkout` (a shopper checks out again only once its last order is final: the cart
//! keeps ordered lines until then); `browse` searches and opens product pages; `mixed` is 60%
//! browse, 25% order, 15% checkout. Latencies are HDR histograms (µs, 3 significant digits).

use crate::shop::{Shop, ShopArgs};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// `POST /orders`.
    Order,
    /// `POST /cart/items`, then `POST /cart/checkout`.
    Checkout,
    /// Search (`GET /products?q=`) and product pages (`GET /products/{id}`).
    Browse,
    /// 60% browse, 25% order, 15% checkout.
    Mixed,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub shop: ShopArgs,
    /// Open loop: actions per second (orders/s for `--scenario order`), each sent at its
    /// intended time.
    #[arg(long, conflicts_with = "orders")]
    pub rate: Option<f64>,
    /// Open loop: how long to offer the load (`60s`, `2m`, `500ms`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Open loop: keep-alive connections the actions share (like wrk's -c).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Closed loop: how many actions (orders) to run [default: 200].
    #[arg(long)]
    pub orders: Option<u64>,
    /// Closed loop: how many shoppers act at the same time, each waiting for its order to be
    /// PAID before the next.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Scenario::Order)]
    pub scenario: Scenario,
    /// Customer accounts to register for the run; orders are spread over them.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Products to spread orders over (the cheapest of the catalog); their stock is topped up.
    #[arg(long, default_value_t = 10)]
    pub products: usize,
    /// Card token every order pays with.
    #[arg(long, default_value = "pm_card_visa")]
    pub payment_method: String,
    /// Open loop: follow 1 in N accepted orders to PAID with a held `?wait=` [default: every
    /// order up to 50 a second].
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// After the load: how long to wait for accepted orders to become final.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `250ms`, `5s`, `2m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------------
// The open loop's clock.

/// When each action of an open-loop run is meant to be sent: action `i` at `i / rate` seconds
/// after the start, computed from `i` (never by adding intervals up, which drifts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: u64,
}

impl Schedule {
    pub fn new(rate: f64, duration: Duration) -> Schedule {
        Schedule {
            rate,
            total: (rate * duration.as_secs_f64()).round().max(1.0) as u64,
        }
    }

    /// How many actions the run has.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When action `i` is meant to go, after the start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many actions are due `elapsed` after the start (those whose time has come). A
    /// dispatcher that woke late sends all of them at once; each keeps its intended time.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let due = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        due.min(self.total)
    }
}

/// What action `i` of a scenario is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Order,
    Checkout,
    Browse,
}

impl Scenario {
    /// Deterministic, so runs repeat: in `mixed`, of every 20 actions 12 browse, 5 order and 3
    /// check out, interleaved.
    pub fn action(self, i: u64) -> Action {
        match self {
            Scenario::Order => Action::Order,
            Scenario::Checkout => Action::Checkout,
            Scenario::Browse => Action::Browse,
            Scenario::Mixed => match i % 20 {
                1 | 5 | 9 | 13 | 17 => Action::Order,
                3 | 11 | 19 => Action::Checkout,
                _ => Action::Browse,
            },
        }
    }

    /// The share of actions that place an order.
    fn ordering_share(self) -> f64 {
        match self {
            Scenario::Order | Scenario::Checkout => 1.0,
            Scenario::Browse => 0.0,
            Scenario::Mixed => 0.4,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What is measured.

/// How an order-placing request was answered.
fn answer_class(status: Option<StatusCode>, overloaded: bool) -> &'static str {
    match status.map(|s| s.as_u16()) {
        None => "no answer",
        Some(200 | 201) => "201",
        Some(409) => "409",
        Some(422) => "422",
        Some(429) => "429",
        Some(503) if overloaded => "503 overloaded",
        Some(503) => "503 other",
        Some(_) => "other",
    }
}

const CLASSES: [&str; 8] = [
    "201",
    "409",
    "422",
    "429",
    "503 overloaded",
    "503 other",
    "other",
    "no answer",
];

#[expect(
    clippy::expect_used,
    reason = "constant bounds that hdrhistogram accepts"
)]
fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 3_600_000_000));
}

/// The run as it went, one entry a second (cumulative counts).
#[derive(Default, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub sent: u64,
    pub accepted: u64,
    pub final_orders: u64,
    pub errors: u64,
    pub backlog: u64,
}

struct Stats {
    accept: Histogram<u64>,
    paid: Histogram<u64>,
    browse: Histogram<u64>,
    /// Answers to order-placing requests by class.
    answers: BTreeMap<&'static str, u64>,
    /// Answers to every other request (cart lines, browsing) by status.
    other: BTreeMap<String, u64>,
    sampled_cancelled: u64,
    timeline: Vec<Second>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            accept: histogram(),
            paid: histogram(),
            browse: histogram(),
            answers: CLASSES.iter().map(|c| (*c, 0)).collect(),
            other: BTreeMap::new(),
            sampled_cancelled: 0,
            timeline: Vec::new(),
        }
    }
}

/// Counters the progress line reads without a lock.
#[derive(Default)]
struct Counters {
    spawned: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    finals: AtomicU64,
    cancelled: AtomicU64,
    paid_in_run: AtomicU64,
    waited_for_shopper: AtomicU64,
    sample_skipped: AtomicU64,
}

/// This run's accepted orders that are not final yet.
struct Tracked {
    accepted_at: Instant,
    /// The shopper to free when it is final (checkout: one cart per shopper).
    shopper: Option<usize>,
}

/// Shoppers: accounts with a token; for checkouts, which are free.
struct Shoppers {
    tokens: Vec<String>,
    free: Mutex<VecDeque<usize>>,
    freed: Notify,
}

impl Shoppers {
    async fn take(&self, counters: &Counters) -> usize {
        let mut waited = false;
        loop {
            let notified = self.freed.notified();
            if let Some(i) = self
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return i;
            }
            if !waited {
                counters.waited_for_shopper.fetch_add(1, Ordering::Relaxed);
                waited = true;
            }
            notified.await;
        }
    }

    fn give_back(&self, i: usize) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(i);
        self.freed.notify_one();
    }
}

/// Everything the actions share.
struct Run {
    shop: Shop,
    args: LoadArgs,
    admin: String,
    shoppers: Shoppers,
    products: Vec<String>,
    words: Vec<String>,
    connections: Semaphore,
    followers: Arc<Semaphore>,
    connection_count: usize,
    stats: Mutex<Stats>,
    counters: Counters,
    tracked: Mutex<HashMap<String, Tracked>>,
    started: Instant,
    sample_every: u64,
    closed_loop: bool,
}

impl Run {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_other(&self, status: Option<StatusCode>) {
        let key = status.map_or("no answer".to_owned(), |s| s.as_u16().to_string());
        *self.stats().other.entry(key).or_default() += 1;
        if !status.is_some_and(|s| s.is_success()) {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs action `i`, meant to be sent at `intended`. Returns the order it placed, if any.
    async fn act(self: &Arc<Self>, i: u64, intended: Instant) -> Option<(String, usize)> {
        match self.args.scenario.action(i) {
            Action::Browse => {
                self.browse(i, intended).await;
                None
            }
            Action::Order => {
                let shopper = i as usize % self.shoppers.tokens.len();
                let product = &self.products[i as usize % self.products.len()];
                let body = json!({"items": [{"product_id": product, "quantity": 1}],
                    "payment_method": self.args.payment_method});
                let id = self
                    .place(self.shop.api("order", "/orders"), shopper, &body, intended)
                    .await?;
                Some((id, shopper))
            }
            Action::Checkout => self.checkout(i, intended).await,
        }
    }

    async fn browse(&self, i: u64, intended: Instant) {
        let url = if i.is_multiple_of(3) {
            let word = &self.words[(i / 3) as usize % self.words.len()];
            self.shop
                .api("catalog", &format!("/products?q={word}&limit=20"))
        } else {
            let id = &self.products[i as usize % self.products.len()];
            self.shop.api("catalog", &format!("/products/{id}"))
        };
        let _permit = self.connections.acquire().await.ok();
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        let status = match self.shop.http.get(&url).send().await {
            Ok(res) => {
                let status = res.status();
                let _ = res.bytes().await;
                Some(status)
            }
            Err(_) => None,
        };
        record(&mut self.stats().browse, intended.elapsed());
        self.count_other(status);
    }

    /// Posts an order-placing request as `shopper`; the order's id when it was accepted.
    async fn place(
        &self,
        url: String,
        shopper: usize,
        body: &Value,
        intended: Instant,
    ) -> Option<String> {
        let _permit = self.connections.acquire().await.ok();
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        let res = self
            .shop
            .http
            .post(&url)
            .bearer_auth(&self.shoppers.tokens[shopper])
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(body)
            .send()
            .await;
        let (status, overloaded, order) = match res {
            Ok(res) => {
                let status = res.status();
                let overloaded = mercato_kit::problem::is_overloaded(status, res.headers());
                let body: Option<Value> = res.json().await.ok();
                let id = body
                    .filter(|_| status == StatusCode::CREATED)
                    .and_then(|b| b["id"].as_str().map(str::to_owned));
                (Some(status), overloaded, id)
            }
            Err(_) => (None, false, None),
        };
        let class = answer_class(status, overloaded);
        {
            let mut stats = self.stats();
            *stats.answers.entry(class).or_default() += 1;
            if order.is_some() {
                record(&mut stats.accept, intended.elapsed());
            }
        }
        if order.is_some() {
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        order
    }

    async fn checkout(self: &Arc<Self>, i: u64, intended: Instant) -> Option<(String, usize)> {
        let shopper = self.shoppers.take(&self.counters).await;
        let token = &self.shoppers.tokens[shopper];
        let product = &self.products[i as usize % self.products.len()];
        let added = {
            let _permit = self.connections.acquire().await.ok();
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            self.shop
                .http
                .post(self.shop.api("cart", "/cart/items"))
                .bearer_auth(token)
                .json(&json!({"product_id": product, "quantity": 1}))
                .send()
                .await
                .ok()
                .map(|r| r.status())
        };
        self.count_other(added);
        let body = json!({"payment_method": self.args.payment_method});
        let placed = if added.is_some_and(|s| s.is_success()) {
            self.place(
                self.shop.api("cart", "/cart/checkout"),
                shopper,
                &body,
                intended,
            )
            .await
        } else {
            None
        };
        match placed {
            Some(id) => Some((id, shopper)),
            None => {
                // Nothing was ordered: empty the cart so the shopper's next checkout orders
                // only what it adds.
                let _permit = self.connections.acquire().await.ok();
                let emptied = self
                    .shop
                    .http
                    .delete(self.shop.api("cart", "/cart"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status());
                self.count_other(emptied);
                self.shoppers.give_back(shopper);
                None
            }
        }
    }

    /// Tracks an accepted order until it is final; follows it with `?wait=` when sampled (or
    /// in the closed loop, where every order is followed by its shopper).
    fn accepted(self: &Arc<Self>, n: u64, id: String, shopper: usize, checkout: bool) {
        let now = Instant::now();
        self.tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                Tracked {
                    accepted_at: now,
                    shopper: checkout.then_some(shopper),
                },
            );
        if self.closed_loop || !n.is_multiple_of(self.sample_every) {
            return;
        }
        let Ok(permit) = self.followers.clone().try_acquire_owned() else {
            self.counters.sample_skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let run = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            run.follow(&id, shopper, now).await;
        });
    }

    /// Holds `GET /orders/{id}?wait=` until the order leaves the saga; records accepted→PAID.
    async fn follow(&self, id: &str, shopper: usize, accepted_at: Instant) {
        let url = self.shop.api("order", &format!("/orders/{id}?wait=10"));
        let deadline = accepted_at + Duration::from_secs(120);
        while Instant::now() < deadline {
            let Ok(res) = self
                .shop
                .http
                .get(&url)
                .bearer_auth(&self.shoppers.tokens[shopper])
                .send()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Ok(o) = res.json::<Value>().await else {
                continue;
            };
            match o["status"].as_str() {
                Some("PENDING" | "CONFIRMED") | None => continue,
                Some("PAID") => {
                    record(&mut self.stats().paid, accepted_at.elapsed());
                    break;
                }
                Some(_) => {
                    self.stats().sampled_cancelled += 1;
                    break;
                }
            }
        }
        self.finished([&id.to_owned()], &HashSet::new());
    }

    /// These orders are final (`cancelled` among them were cancelled).
    fn finished<'a>(&self, ids: impl IntoIterator<Item = &'a String>, cancelled: &HashSet<String>) {
        let in_run = self.started.elapsed() <= self.args.duration || self.closed_loop;
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let Some(t) = tracked.remove(id) else {
                continue;
            };
            self.counters.finals.fetch_add(1, Ordering::Relaxed);
            if cancelled.contains(id) {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            } else if in_run {
                self.counters.paid_in_run.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(s) = t.shopper {
                self.shoppers.give_back(s);
            }
        }
    }

    fn backlog(&self) -> u64 {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Ids of a status list, all pages, newest first; stops at orders older than `since`.
    async fn list_ids(&self, status: &str, since: Option<i64>) -> anyhow::Result<HashSet<String>> {
        let mut ids = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self
                .shop
                .api("order", &format!("/orders?status={status}&limit=100"));
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self.shop.get_json(&url, Some(&self.admin)).await?;
            let mut older = false;
            for o in page["items"].as_array().into_iter().flatten() {
                let created = o["created_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_micros());
                if since.is_some_and(|s| created.is_some_and(|c| c < s)) {
                    older = true;
                    break;
                }
                if let Some(id) = o["id"].as_str() {
                    ids.insert(id.to_owned());
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() || older {
                return Ok(ids);
            }
        }
    }

    /// One look at the backlog: every tracked order accepted before it started that is no
    /// longer PENDING or CONFIRMED is final. The lists are read PENDING first, then
    /// CONFIRMED: orders only move forward, so one that left PENDING before the first read
    /// reached it is in CONFIRMED when the second starts, unless it is final already.
    async fn look(&self, run_start_us: i64) -> anyhow::Result<()> {
        let began = Instant::now();
        let mut in_saga = self.list_ids("PENDING", None).await?;
        in_saga.extend(self.list_ids("CONFIRMED", None).await?);
        let done: HashSet<String> = self
            .tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, t)| t.accepted_at < began && !in_saga.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        let cancelled: HashSet<String> = self
            .list_ids("CANCELLED", Some(run_start_us))
            .await?
            .into_iter()
            .filter(|id| done.contains(id))
            .collect();
        self.finished(done.iter(), &cancelled);
        Ok(())
    }
}

/// Sampled orders followed at once (each holds a connection with `?wait=`); a sampled order
/// beyond them is counted as not sampled.
const FOLLOWERS: usize = 256;

// ---------------------------------------------------------------------------------------------
// Setting up.

async fn register_shoppers(shop: &Shop, n: usize, run: &str) -> anyhow::Result<Vec<String>> {
    let password = "Load-test-password-1";
    let gate = Arc::new(Semaphore::new(8));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (shop, gate) = (shop.clone(), gate.clone());
        let email = format!("load-{run}-{i}@mercato.local");
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await;
            let url = shop.api("auth", "/auth/register");
            let res = shop
                .http
                .post(&url)
                .json(&json!({"email": email, "password": password, "name": "Load Test"}))
                .send()
                .await
                .with_context(|| format!("reaching {url}: is Mercato running?"))?;
            if res.status() != StatusCode::CREATED {
                bail!(
                    "registering a shopper failed ({}): {}",
                    res.status(),
                    res.text().await.unwrap_or_default()
                );
            }
            shop.login(&email, password).await
        }));
    }
    let mut tokens = Vec::with_capacity(n);
    for t in tasks {
        tokens.push(t.await??);
    }
    Ok(tokens)
}

/// The cheapest `n` products, with enough stock for `units` orders of one unit spread over
/// them (topped up as the admin when short), and words to search for.
async fn stock_products(
    shop: &Shop,
    admin: &str,
    n: usize,
    units: u64,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let list = shop
        .get_json(
            &shop.api(
                "catalog",
                &format!("/products?limit={}&sort=price_asc", n.clamp(1, 100)),
            ),
            None,
        )
        .await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        bail!("the catalog has no product to order; start with demo data (mercato up)");
    }
    let mut words: Vec<String> = items
        .iter()
        .filter_map(|p| {
            p["name"]
                .as_str()?
                .split_whitespace()
                .last()
                .map(str::to_lowercase)
        })
        .collect();
    words.sort();
    words.dedup();
    let per_product = units / items.len() as u64 + 20;
    let mut ids = Vec::new();
    for p in &items {
        let id = p["id"].as_str().unwrap_or_default().to_owned();
        let stock = known_stock(shop, &id).await?;
        let available = stock["available"].as_i64().unwrap_or(0);
        if units > 0 && available < per_product as i64 {
            let on_hand = stock["on_hand"].as_i64().unwrap_or(0) + per_product as i64 - available;
            let res = shop
                .http
                .put(shop.api("inventory", &format!("/inventory/{id}")))
                .bearer_auth(admin)
                .json(&json!({"on_hand": on_hand, "note": "mercato load top-up"}))
                .send()
                .await?;
            if !res.status().is_success() {
                bail!(
                    "topping up the stock of {id} failed: {}",
                    res.text().await.unwrap_or_default()
                );
            }
        }
        ids.push(id);
    }
    Ok((ids, words))
}

/// The product's stock, once inventory knows the product: a shop just started may still be
/// passing its catalog to inventory (and to the order service) by events.
async fn known_stock(shop: &Shop, id: &str) -> anyhow::Result<Value> {
    let url = shop.api("inventory", &format!("/inventory/{id}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = shop.http.get(&url).send().await?;
        if res.status() == StatusCode::OK {
            return Ok(res.json().await?);
        }
        if res.status() != StatusCode::NOT_FOUND || Instant::now() > deadline {
            bail!("{url} answered {}", res.status());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Running.

pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    let closed_loop = a.rate.is_none();
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be more than zero");
        }
    }
    let orders = a.orders.unwrap_or(200);
    let workers = if closed_loop {
        a.concurrency.max(1)
    } else {
        a.connections.max(1)
    };
    let schedule = a.rate.map(|r| Schedule::new(r, a.duration));
    let actions = schedule.map_or(orders, |s| s.total());
    let order_units = (actions as f64 * a.scenario.ordering_share()).ceil() as u64;
    let sample_every = a.sample_every.unwrap_or_else(|| {
        let per_sec = a.rate.unwrap_or(0.0) * a.scenario.ordering_share();
        ((per_sec / 50.0).ceil() as u64).max(1)
    });

    let shop = Shop::resolve(&a.shop, workers + FOLLOWERS)?;
    let admin = shop
        .login(&a.shop.admin_email, &a.shop.admin_password)
        .await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let users = if a.scenario == Scenario::Browse {
        0
    } else {
        a.users.max(1)
    };
    eprintln!("mercato load: registering {users} shoppers and topping up stock...");
    let tokens = register_shoppers(&shop, users, &run_id).await?;
    let (products, words) = stock_products(&shop, &admin, a.products.max(1), order_units).await?;

    let run = Arc::new(Run {
        shoppers: Shoppers {
            free: Mutex::new((0..tokens.len()).collect()),
            tokens,
            freed: Notify::new(),
        },
        shop,
        admin,
        products,
        words,
        connections: Semaphore::new(workers),
        followers: Arc::new(Semaphore::new(FOLLOWERS)),
        connection_count: workers,
        stats: Mutex::new(Stats::new()),
        counters: Counters::default(),
        tracked: Mutex::new(HashMap::new()),
        started: Instant::now(),
        sample_every,
        closed_loop,
        args: a.clone(),
    });
    // A line of its own, so a script timing the shop can leave the sign-ins' hashing out.
    eprintln!("mercato load: shoppers ready; the load starts now");
    let run_start_us = chrono::Utc::now().timestamp_micros();
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}")?);
    let stop = tokio_util::sync::CancellationToken::new();
    let ticker = tokio::spawn(progress(run.clone(), bar.clone(), stop.clone()));
    let watcher =
        (!closed_loop).then(|| tokio::spawn(watch(run.clone(), run_start_us, stop.clone())));

    let offered = match schedule {
        Some(s) => open_loop(&run, s).await,
        None => {
            closed(&run, orders, workers).await;
            run.started.elapsed()
        }
    };
    // Let the accepted orders finish, as long as --drain allows.
    let drain_until = Instant::now() + a.drain;
    while run.backlog() > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = run.started.elapsed().saturating_sub(offered);
    stop.cancel();
    let _ = ticker.await;
    if let Some(w) = watcher {
        let _ = w.await;
    }
    bar.finish_and_clear();
    let summary = summarize(&run, offered, drained);
    print!("{}", render(&summary));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if summary.orders.accepted == 0 && a.scenario != Scenario::Browse {
        bail!("no order was accepted");
    }
    if closed_loop && summary.orders.accepted > summary.orders.final_orders {
        bail!(
            "{} accepted orders did not become final",
            summary.orders.accepted - summary.orders.final_orders
        );
    }
    Ok(())
}

/// The open loop: every action spawned at its intended time, never waiting for answers.
/// Returns how long sending took (the offered load's duration); answers are awaited after.
async fn open_loop(run: &Arc<Run>, schedule: Schedule) -> Duration {
    let start = run.started;
    let mut next = 0;
    let mut tasks = Vec::new();
    while next < schedule.total() {
        let due = schedule.due_by(start.elapsed());
        for i in next..due {
            let intended = start + schedule.offset(i);
            let run = run.clone();
            run.counters.spawned.fetch_add(1, Ordering::Relaxed);
            tasks.push(tokio::spawn(async move {
                if let Some((id, shopper)) = run.act(i, intended).await {
                    let checkout = run.args.scenario.action(i) == Action::Checkout;
                    run.accepted(i, id, shopper, checkout);
                }
            }));
        }
        next = due;
        if next < schedule.total() {
            tokio::time::sleep_until(start + schedule.offset(next)).await;
        }
    }
    let offered = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    offered
}

/// The closed loop: `workers` shoppers, each acting and then following its order to the end.
async fn closed(run: &Arc<Run>, orders: u64, workers: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (run, next) = (run.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders {
                    return;
                }
                run.counters.spawned.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                if let Some((id, shopper)) = run.act(i, sent).await {
                    let checkout = run.args.scenario.action(i) == Action::Checkout;
                    run.accepted(i, id.clone(), shopper, checkout);
                    run.follow(&id, shopper, Instant::now()).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Reads the backlog lists until `stop`, a little after each look ends (at least every
/// 500 ms, less often when a look itself takes long: the shop is loaded enough).
async fn watch(run: Arc<Run>, run_start_us: i64, stop: tokio_util::sync::CancellationToken) {
    loop {
        let began = Instant::now();
        if let Err(e) = run.look(run_start_us).await {
            tracing::debug!(error = %e, "reading the backlog failed");
        }
        let pause = (began.elapsed() * 2).max(Duration::from_millis(500));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The live line, and one timeline entry a second.
async fn progress(run: Arc<Run>, bar: ProgressBar, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_second = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = &run.counters;
        let t = run.started.elapsed();
        let sent = c.sent.load(Ordering::Relaxed);
        let accepted = c.accepted.load(Ordering::Relaxed);
        let finals = c.finals.load(Ordering::Relaxed);
        let cancelled = c.cancelled.load(Ordering::Relaxed);
        let errors = c.errors.load(Ordering::Relaxed);
        let backlog = run.backlog();
        let p99 = run.stats().accept.value_at_quantile(0.99) as f64 / 1000.0;
        bar.set_message(format!(
            "{:>6.1}s  sent {sent} ({:.0}/s)  accepted {accepted}  paid {}  cancelled {cancelled}  errors {errors}  accept p99 {p99:.1} ms  backlog {backlog}",
            t.as_secs_f64(),
            sent as f64 / t.as_secs_f64().max(0.001),
            finals - cancelled,
        ));
        bar.tick();
        if t.as_secs() > last_second {
            last_second = t.as_secs();
            run.stats().timeline.push(Second {
                t: last_second,
                sent,
                accepted,
                final_orders: finals,
                errors,
                backlog,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

#[derive(Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Serialize)]
pub struct OrderCounts {
    pub accepted: u64,
    pub accepted_per_sec: f64,
    /// Final (PAID, or CANCELLED) during the offered load.
    pub paid_during_load: u64,
    pub paid_per_sec: f64,
    pub final_orders: u64,
    pub cancelled: u64,
    /// Accepted and not yet final when the run ended.
    pub backlog_at_end: u64,
}

#[derive(Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    /// `open` or `closed`.
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub connections: usize,
    pub shoppers: usize,
    pub products: usize,
    pub target: String,
    pub offered_secs: f64,
    pub drain_secs: f64,
    pub sent_requests: u64,
    pub orders: OrderCounts,
    /// Answers to order-placing requests (`POST /orders`, `POST /cart/checkout`).
    pub answers: BTreeMap<&'static str, u64>,
    /// Answers to every other request, by status.
    pub other_answers: BTreeMap<String, u64>,
    /// From each action's intended send time to its answer (the checkout's, for a checkout).
    pub accept_latency: Latency,
    pub paid_latency: Latency,
    /// How accepted→PAID was measured.
    pub paid_measured: String,
    pub browse_latency: Latency,
    pub waited_for_a_shopper: u64,
    pub timeline: Vec<Second>,
}

fn summarize(run: &Run, offered: Duration, drained: Duration) -> Summary {
    let c = &run.counters;
    let stats = run.stats();
    let secs = offered.as_secs_f64().max(0.001);
    let accepted = c.accepted.load(Ordering::Relaxed);
    let paid_in_run = c.paid_in_run.load(Ordering::Relaxed);
    let paid_measured = if run.closed_loop {
        "every order, each followed by its shopper with ?wait=".to_owned()
    } else {
        format!(
            "a sample of 1 in {} accepted orders, each followed with ?wait= ({} sampled orders were cancelled, {} not sampled: followers busy); every order's end counted from the backlog lists",
            run.sample_every,
            stats.sampled_cancelled,
            c.sample_skipped.load(Ordering::Relaxed)
        )
    };
    Summary {
        scenario: run.args.scenario,
        mode: if run.closed_loop { "closed" } else { "open" },
        rate: run.args.rate,
        connections: run.connection_count,
        shoppers: run.shoppers.tokens.len(),
        products: run.products.len(),
        target: run.shop.describe(),
        offered_secs: offered.as_secs_f64(),
        drain_secs: drained.as_secs_f64(),
        sent_requests: c.sent.load(Ordering::Relaxed),
        orders: OrderCounts {
            accepted,
            accepted_per_sec: accepted as f64 / secs,
            paid_during_load: paid_in_run,
            paid_per_sec: paid_in_run as f64 / secs,
            final_orders: c.finals.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            backlog_at_end: run.backlog(),
        },
        answers: stats.answers.clone(),
        other_answers: stats.other.clone(),
        accept_latency: Latency::from(&stats.accept),
        paid_latency: Latency::from(&stats.paid),
        paid_measured,
        browse_latency: Latency::from(&stats.browse),
        waited_for_a_shopper: c.waited_for_shopper.load(Ordering::Relaxed),
        timeline: stats.timeline.clone(),
    }
}

/// The final table.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let how = match s.rate {
        Some(r) => format!(
            "open loop, {r}/s for {:.1} s over {} connections",
            s.offered_secs, s.connections
        ),
        None => format!("closed loop, {:.1} s", s.offered_secs),
    };
    let _ = writeln!(
        out,
        "mercato load: scenario {}, {how}, {} shoppers, {} products, against {}",
        format!("{:?}", s.scenario).to_lowercase(),
        s.shoppers,
        s.products,
        s.target
    );
    let o = &s.orders;
    let _ = writeln!(out, "  requests sent         {}", s.sent_requests);
    let _ = writeln!(
        out,
        "  orders accepted       {:<10} {:>9.1}/s",
        o.accepted, o.accepted_per_sec
    );
    let _ = writeln!(
        out,
        "  orders paid           {:<10} {:>9.1}/s  (final during the load, cancelled excluded)",
        o.paid_during_load, o.paid_per_sec
    );
    let _ = writeln!(
        out,
        "  orders final          {:<10} ({} cancelled) after {:.1} s of drain",
        o.final_orders, o.cancelled, s.drain_secs
    );
    let _ = writeln!(
        out,
        "  backlog at end        {:<10} (accepted, not yet PAID or CANCELLED)",
        o.backlog_at_end
    );
    let _ = writeln!(
        out,
        "  latency (ms)          {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "max", "count"
    );
    for (name, l) in [
        ("accept", &s.accept_latency),
        ("accepted->PAID", &s.paid_latency),
        ("browse", &s.browse_latency),
    ] {
        if l.count == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "  {name:<20} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        );
    }
    let _ = writeln!(out, "  accepted->PAID: {}", s.paid_measured);
    let answers: Vec<String> = s.answers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(out, "  order answers         {}", answers.join(" · "));
    if !s.other_answers.is_empty() {
        let other: Vec<String> = s
            .other_answers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "  other answers         {}", other.join(" · "));
    }
    if s.waited_for_a_shopper > 0 {
        let _ = writeln!(
            out,
            "  {} checkouts waited for a free shopper (its last order not final yet): the generator was a bound; raise --users",
            s.waited_for_a_shopper
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_come_from_the_index_and_do_not_drift() {
        let s = Schedule::new(1000.0, Duration::from_secs(60));
        assert_eq!(s.total(), 60_000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(59_999), Duration::from_millis(59_999));
        // 3/s: every third of a second, exactly, however far into the run.
        let s = Schedule::new(3.0, Duration::from_secs(3600));
        assert_eq!(s.offset(3 * 3000), Duration::from_secs(3000));
        assert_eq!(s.offset(1).as_nanos(), 333_333_333);
        assert_eq!(s.total(), 10_800);
    }

    #[test]
    fn a_late_wake_sends_everything_due_and_never_more_than_the_run() {
        let s = Schedule::new(2000.0, Duration::from_secs(5));
        assert_eq!(s.due_by(Duration::ZERO), 1);
        // Woken 10 ms late at the start: 21 actions are due (0 ms .. 10 ms).
        assert_eq!(s.due_by(Duration::from_millis(10)), 21);
        assert_eq!(s.due_by(Duration::from_micros(10_499)), 21);
        assert_eq!(s.due_by(Duration::from_micros(10_500)), 22);
        assert_eq!(s.due_by(Duration::from_secs(3600)), 10_000);
        // Every action is due at or after its own intended time.
        for i in [0, 1, 7, 999, 9_999] {
            assert!(s.due_by(s.offset(i)) > i, "{i}");
        }
        // A rate too low for the duration still sends one action.
        assert_eq!(Schedule::new(0.1, Duration::from_secs(1)).total(), 1);
    }

    #[test]
    fn mixed_is_sixty_twenty_five_fifteen() {
        let mut counts = HashMap::new();
        for i in 0..2000 {
            *counts.entry(Scenario::Mixed.action(i)).or_insert(0) += 1;
        }
        assert_eq!(counts[&Action::Browse], 1200);
        assert_eq!(counts[&Action::Order], 500);
        assert_eq!(counts[&Action::Checkout], 300);
    }

    #[test]
    fn durations_and_answer_classes() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(answer_class(Some(StatusCode::CREATED), false), "201");
        assert_eq!(
            answer_class(Some(StatusCode::SERVICE_UNAVAILABLE), true),
            "503 overloaded"
        );
        assert_eq!(
            answer_class(Some(StatusCode::SERVICE_UNAVAILABLE), false),
            "503 other"
        );
        assert_eq!(answer_class(None, false), "no answer");
    }
}

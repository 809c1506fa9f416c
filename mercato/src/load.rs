//! `mercato load`: drives a running Mercato through its public API the way shoppers do and
//! measures how long an order takes to be paid. It is the benchmark the saga's speed is judged
//! by: placing an order (`POST /orders`) and waiting for PAID (`GET /orders/{id}?wait=`), with
//! a chosen concurrency, reporting latency percentiles and throughput.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// How many orders to place.
    #[arg(long, default_value_t = 200)]
    pub orders: usize,
    /// How many shoppers order at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Card token every order pays with.
    #[arg(long, default_value = "pm_card_visa")]
    pub payment_method: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub auth_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub catalog_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8083")]
    pub order_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8086")]
    pub inventory_url: String,
    /// An admin account, to top up the stock the run needs (the demo admin by default).
    #[arg(long, default_value = "admin@mercato.local")]
    pub admin_email: String,
    #[arg(long, default_value = "Admin-demo-2026")]
    pub admin_password: String,
}

async fn login(http: &Client, auth: &str, email: &str, password: &str) -> anyhow::Result<String> {
    let res = http
        .post(format!("{auth}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .with_context(|| format!("reaching auth at {auth}: is Mercato running?"))?;
    if res.status() != StatusCode::OK {
        bail!(
            "login of {email} failed: {}",
            res.text().await.unwrap_or_default()
        );
    }
    Ok(res.json::<Value>().await?["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    let http = Client::builder()
        .pool_max_idle_per_host(a.concurrency.max(1) * 2)
        .build()?;
    // A fresh customer for this run, and stock enough for every order on one product.
    let email = format!("load-{}@mercato.local", uuid::Uuid::new_v4().simple());
    let password = "Load-test-password-1";
    let res = http
        .post(format!("{}/api/v1/auth/register", a.auth_url))
        .json(&json!({"email": email, "password": password, "name": "Load Test"}))
        .send()
        .await
        .with_context(|| format!("reaching auth at {}: is Mercato running?", a.auth_url))?;
    if res.status() != StatusCode::CREATED {
        bail!(
            "registering the load customer failed: {}",
            res.text().await.unwrap_or_default()
        );
    }
    let customer = login(&http, &a.auth_url, &email, password).await?;
    let admin = login(&http, &a.auth_url, &a.admin_email, &a.admin_password).await?;
    let products: Value = http
        .get(format!(
            "{}/api/v1/products?limit=1&sort=price_asc",
            a.catalog_url
        ))
        .send()
        .await?
        .json()
        .await?;
    let Some(product) = products["items"][0]["id"].as_str().map(str::to_owned) else {
        bail!("the catalog has no product to order; start with demo data (mercato up)");
    };
    let stock: Value = http
        .get(format!("{}/api/v1/inventory/{product}", a.inventory_url))
        .send()
        .await?
        .json()
        .await?;
    let needed = a.orders as i64;
    let available = stock["available"].as_i64().unwrap_or(0);
    if available < needed {
        let on_hand = stock["on_hand"].as_i64().unwrap_or(0) + (needed - available);
        let res = http
            .put(format!("{}/api/v1/inventory/{product}", a.inventory_url))
            .bearer_auth(&admin)
            .json(&json!({"on_hand": on_hand, "note": "mercato load top-up"}))
            .send()
            .await?;
        if !res.status().is_success() {
            bail!(
                "topping up stock failed: {}",
                res.text().await.unwrap_or_default()
            );
        }
    }

    let bar = ProgressBar::new(a.orders as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} {bar:40} {pos}/{len} orders paid  {per_sec}  eta {eta}",
    )?);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(a.orders);
    for _ in 0..a.orders {
        let permit = sem.clone().acquire_owned().await?;
        let (http, a, customer, product, bar) = (
            http.clone(),
            a.clone(),
            customer.clone(),
            product.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let res = http
                .post(format!("{}/api/v1/orders", a.order_url))
                .bearer_auth(&customer)
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&json!({"items": [{"product_id": product, "quantity": 1}], "payment_method": a.payment_method}))
                .send()
                .await?;
            if res.status() != StatusCode::CREATED {
                bail!("order refused: {}", res.text().await.unwrap_or_default());
            }
            let created = t0.elapsed();
            let id = res.json::<Value>().await?["id"].as_str().unwrap_or_default().to_owned();
            loop {
                let o: Value = http
                    .get(format!("{}/api/v1/orders/{id}?wait=10", a.order_url))
                    .bearer_auth(&customer)
                    .send()
                    .await?
                    .json()
                    .await?;
                match o["status"].as_str() {
                    Some("PENDING") | Some("CONFIRMED") => continue,
                    Some("PAID") => break,
                    other => bail!("order {id} ended {other:?}: {}", o["cancel_reason"]),
                }
            }
            bar.inc(1);
            Ok::<_, anyhow::Error>((created, t0.elapsed()))
        }));
    }
    let mut created = Vec::new();
    let mut paid = Vec::new();
    let mut failures = 0;
    for t in tasks {
        match t.await? {
            Ok((c, p)) => {
                created.push(c);
                paid.push(p);
            }
            Err(e) => {
                failures += 1;
                bar.println(format!("failed: {e:#}"));
            }
        }
    }
    bar.finish_and_clear();
    let wall = started.elapsed();
    created.sort();
    paid.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "mercato load: {} orders, concurrency {}, {}",
        a.orders, a.concurrency, a.payment_method
    );
    println!(
        "  paid      {} ({} failed) in {:.2} s = {:.1} orders/s",
        paid.len(),
        failures,
        wall.as_secs_f64(),
        paid.len() as f64 / wall.as_secs_f64()
    );
    for (name, v) in [("accepted", &created), ("paid", &paid)] {
        println!(
            "  {name:<9} p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.9)),
            ms(percentile(v, 0.99)),
            ms(percentile(v, 1.0))
        );
    }
    if failures > 0 {
        bail!("{failures} orders did not reach PAID");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let v: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}

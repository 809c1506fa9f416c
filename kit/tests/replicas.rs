//! Several processes of one service on one PostgreSQL schema: their outbox relays publish each
//! event once and in order, a relay hears of another replica's commits by polling, and
//! processes starting together create the schema and migrate it once.
//!
//! Needs `MERCATO_TEST_DATABASE_URL` naming a PostgreSQL server (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`): ignored otherwise, run by CI's backend tier
//! with `--include-ignored`. Each test works in a schema or database of
//! its own and drops it at the end. Two `Db` handles on one schema stand for two processes:
//! they share nothing but the database.

use mercato_kit::db::{Db, Migrations};
use mercato_kit::events::{append, pending, Bus, Envelope, Relay, Subscription};
use mercato_kit::testing::backend;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn postgres() -> String {
    let url = backend("MERCATO_TEST_DATABASE_URL");
    assert!(
        url.starts_with("postgres"),
        "MERCATO_TEST_DATABASE_URL names no PostgreSQL: {url}"
    );
    url
}

fn no_migrations() -> Migrations {
    Migrations {
        sqlite: Migrator::DEFAULT,
        postgres: Migrator::DEFAULT,
    }
}

/// A schema of its own for one test, dropped at the end.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str) -> Schema {
        Schema {
            url: url.to_owned(),
            name: format!("kit_test_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// One more process on it.
    async fn open(&self) -> Db {
        Db::connect(&self.url, &self.name, 4, &no_migrations())
            .await
            .unwrap()
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "PostgreSQL administration: these tests run on PostgreSQL only"
    )]
    async fn drop(self) {
        let admin = sqlx::PgPool::connect(&self.url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

/// A bus that notes what was published, in the order it was published, and takes a moment
/// doing it, so relays running side by side overlap.
#[derive(Default)]
struct Recording {
    published: Mutex<Vec<Envelope>>,
}

impl Recording {
    fn numbers(&self) -> Vec<i64> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.payload["n"].as_i64().unwrap())
            .collect()
    }
}

#[async_trait::async_trait]
impl Bus for Recording {
    async fn publish(&self, env: &Envelope) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_micros(200)).await;
        self.published.lock().unwrap().push(env.clone());
        Ok(())
    }

    async fn subscribe(&self, _: &str, _: &[&str]) -> anyhow::Result<Box<dyn Subscription>> {
        anyhow::bail!("publishing only")
    }
}

fn event(n: i64) -> Envelope {
    Envelope::new(
        "producer",
        "thing.happened",
        format!("agg-{}", n % 5),
        &serde_json::json!({ "n": n }),
    )
}

async fn produce(db: &Db, n: i64) {
    let mut tx = db.begin().await.unwrap();
    append(&mut tx, &event(n)).await.unwrap();
    tx.commit().await.unwrap();
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    mercato_kit::testing::until(what, Duration::from_secs(20), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs MERCATO_TEST_DATABASE_URL naming PostgreSQL (CI's backend tier)"]
async fn relays_of_two_replicas_publish_each_event_once_and_in_order() {
    let url = postgres();
    let schema = Schema::new(&url);
    let (a, b) = (schema.open().await, schema.open().await);
    let bus = Arc::new(Recording::default());
    let stop = CancellationToken::new();
    let relays = [&a, &b].map(|db| {
        let relay = Relay::new(db.clone(), bus.clone()).with_poll(Duration::from_millis(20));
        tokio::spawn(relay.run(stop.clone()))
    });
    // Both replicas write; each wakes its own relay, and the other one polls.
    const N: i64 = 400;
    for n in 0..N {
        let db = if n % 2 == 0 { &a } else { &b };
        produce(db, n).await;
        db.outbox_waker().wake();
    }
    until("everything published", || async {
        pending(a.reader(), 1).await.unwrap().is_empty()
    })
    .await;
    stop.cancel();
    for r in relays {
        r.await.unwrap();
    }
    // In `seq` order and once each: so also in order per aggregate.
    assert_eq!(bus.numbers(), (0..N).collect::<Vec<_>>());
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_DATABASE_URL naming PostgreSQL (CI's backend tier)"]
async fn a_relay_publishes_nothing_behind_rows_another_relay_holds() {
    let url = postgres();
    let schema = Schema::new(&url);
    let (db, other) = (schema.open().await, schema.open().await);
    for n in 1..=5 {
        produce(&db, n).await;
    }
    let bus = Arc::new(Recording::default());
    let relay = Relay::new(db.clone(), bus.clone());
    // Another relay is publishing the oldest row: nothing may leave before it does.
    let lock_nth = |k: i64| {
        let other = other.clone();
        async move {
            let mut tx = other.begin().await.unwrap();
            // Not `OFFSET ... FOR UPDATE`: that locks the rows it skips as well.
            mercato_kit::db::query(
                "SELECT seq FROM outbox WHERE seq = (SELECT seq FROM outbox \
                 WHERE published_at IS NULL ORDER BY seq LIMIT 1 OFFSET $1) FOR UPDATE",
            )
            .bind(k - 1)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            tx
        }
    };
    let held = lock_nth(1).await;
    assert_eq!(relay.drain().await.unwrap(), 0);
    assert!(bus.numbers().is_empty());
    held.rollback().await.unwrap();
    // Held in the middle: what lies before it leaves, nothing after it.
    let held = lock_nth(3).await;
    assert_eq!(relay.drain().await.unwrap(), 2);
    assert_eq!(bus.numbers(), [1, 2]);
    held.rollback().await.unwrap();
    // Released (that relay died and rolled back): the rest leaves, in order, once.
    assert_eq!(relay.drain().await.unwrap(), 3);
    assert_eq!(relay.drain().await.unwrap(), 0);
    assert_eq!(bus.numbers(), [1, 2, 3, 4, 5]);
    schema.drop().await;
}

/// Publishing commits the transaction it was given first, as if another request's commit
/// landed while the relay was publishing.
struct CommitsWhilePublishing {
    late: tokio::sync::Mutex<Option<mercato_kit::db::Tx>>,
    inner: Recording,
}

#[async_trait::async_trait]
impl Bus for CommitsWhilePublishing {
    async fn publish(&self, env: &Envelope) -> anyhow::Result<()> {
        if let Some(tx) = self.late.lock().await.take() {
            tx.commit().await?;
        }
        self.inner.publish(env).await
    }

    async fn subscribe(&self, _: &str, _: &[&str]) -> anyhow::Result<Box<dyn Subscription>> {
        anyhow::bail!("publishing only")
    }
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_DATABASE_URL naming PostgreSQL (CI's backend tier)"]
async fn a_row_that_commits_late_is_published_not_just_marked() {
    let url = postgres();
    let schema = Schema::new(&url);
    let (db, other) = (schema.open().await, schema.open().await);
    // A sequence number between two committed ones, still uncommitted while they are read.
    produce(&db, 1).await;
    let mut late = other.begin().await.unwrap();
    append(&mut late, &event(2)).await.unwrap();
    produce(&db, 3).await;
    let bus = Arc::new(CommitsWhilePublishing {
        late: tokio::sync::Mutex::new(Some(late)),
        inner: Recording::default(),
    });
    let relay = Relay::new(db.clone(), bus.clone());
    // 2 committed while 1 and 3 were being published: marking them must leave it pending (a
    // range over the batch would mark it published unpublished), so the next round sends it.
    assert_eq!(relay.drain().await.unwrap(), 3);
    assert!(pending(db.reader(), 10).await.unwrap().is_empty());
    assert_eq!(bus.inner.numbers(), [1, 3, 2]);
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_DATABASE_URL naming PostgreSQL (CI's backend tier)"]
async fn a_relay_finds_what_another_replica_committed_without_being_woken() {
    let url = postgres();
    let schema = Schema::new(&url);
    let (db, other) = (schema.open().await, schema.open().await);
    let bus = Arc::new(Recording::default());
    let stop = CancellationToken::new();
    let relay = Relay::new(db.clone(), bus.clone()).with_poll(Duration::from_millis(100));
    let running = tokio::spawn(relay.run(stop.clone()));
    // Committed by the other process, whose relay is gone: nobody wakes ours.
    produce(&other, 7).await;
    until("published by polling", || async { bus.numbers() == [7] }).await;
    stop.cancel();
    running.await.unwrap();
    schema.drop().await;
}

/// Migrations that fail if run twice: the table exists the second time, and the counter
/// would count two. Slow, so processes starting together overlap in it.
fn counting_migrations() -> Migrations {
    let sql = "SELECT pg_sleep(0.3); CREATE TABLE counter (n BIGINT NOT NULL); \
               INSERT INTO counter (n) VALUES (1);";
    let migrator = || Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1000,
            Cow::Borrowed("counter"),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )]),
        ..Migrator::DEFAULT
    };
    Migrations {
        sqlite: migrator(),
        postgres: migrator(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs MERCATO_TEST_DATABASE_URL naming PostgreSQL (CI's backend tier)"]
#[expect(
    clippy::disallowed_methods,
    reason = "PostgreSQL administration: these tests run on PostgreSQL only"
)]
async fn processes_starting_together_create_the_schema_and_migrate_it_once() {
    let url = postgres();
    // A database of its own, so no schema, no migrations table, nothing exists yet.
    let name = format!("kit_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let fresh = format!("{base}/{name}");

    // Six processes of two services, all at once (spawned before any is awaited).
    let starts: Vec<_> = (0..6)
        .map(|i| {
            let fresh = fresh.clone();
            tokio::spawn(async move {
                let service = if i % 2 == 0 { "shop" } else { "order" };
                Db::connect(&fresh, service, 2, &counting_migrations())
                    .await
                    .map(|db| (service, db))
            })
        })
        .collect();
    let mut opened = Vec::new();
    for start in starts {
        opened.push(start.await.unwrap().expect("every process starts"));
    }
    for (service, db) in &opened {
        let counted: i64 = mercato_kit::db::query("SELECT COUNT(*) AS n FROM counter")
            .fetch_one(db.reader())
            .await
            .unwrap()
            .get("n");
        assert_eq!(counted, 1, "{service} migrated once");
        let versions: Vec<i64> =
            mercato_kit::db::query("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(db.reader())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get("version"))
                .collect();
        assert_eq!(versions, [1, 2, 3, 4, 1000], "{service}");
    }
    for (_, db) in opened {
        db.close().await;
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

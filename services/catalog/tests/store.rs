//! The catalog's storage against a real database: paging in every order, paging while
//! products are added, search, the operations' events, and demo seeding.
//!
//! Runs on a fresh SQLite file by default. Set `MERCATO_TEST_DATABASE_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`) to run the same tests on PostgreSQL, each in a
//! schema of its own.

use mercato_catalog::domain::{
    CreateProduct, Forbidden, ListParams, NewProduct, Product, ProductPatch, ProductQuery, Sort,
    UpdateProduct,
};
use mercato_catalog::{events, seed, service, store};
use mercato_kit::auth::{Principal, Role};
use mercato_kit::db::Db;
use mercato_kit::events::Cause;
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{ProductId, UserId};
use mercato_kit::testing::TestDb;
use std::collections::HashSet;

/// A fresh database and its connection; the first keeps the second's files alive.
async fn test_db() -> (TestDb, Db) {
    let t = TestDb::new("catalog");
    let db = t.open(4, &mercato_catalog::migrations()).await;
    (t, db)
}

fn draft(sku: &str, name: &str, description: &str, category: &str, price: i64) -> NewProduct {
    NewProduct::try_from(CreateProduct {
        sku: Some(sku.into()),
        name: Some(name.into()),
        description: Some(description.into()),
        category: Some(category.into()),
        price_cents: Some(price),
        ..Default::default()
    })
    .unwrap()
}

async fn create(db: &Db, d: NewProduct, seller: UserId) -> Product {
    let mut tx = db.begin().await.unwrap();
    let p = service::create(&mut tx, d, seller, &Cause::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    p
}

async fn list(db: &Db, params: ListParams) -> store::Page {
    let q = ProductQuery::try_from(params).unwrap();
    store::list(db.reader(), &q).await.unwrap()
}

/// Every page of a list, following cursors to the end.
async fn all_pages(db: &Db, sort: Sort, limit: u32) -> Vec<Vec<Product>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = list(
            db,
            ListParams {
                sort: Some(sort.to_string()),
                limit: Some(limit.to_string()),
                cursor: cursor.take(),
                ..Default::default()
            },
        )
        .await;
        let next = page.next.clone();
        pages.push(page.items);
        match next {
            Some(c) => cursor = Some(c.encode()),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging never ends");
    }
}

/// The order a sort must produce, computed here from the rules rather than by the database.
fn sorted(products: &[Product], sort: Sort) -> Vec<ProductId> {
    let mut v: Vec<&Product> = products.iter().collect();
    v.sort_by(|a, b| {
        let o = sort.key_of(a).cmp(&sort.key_of(b)).then(a.id.cmp(&b.id));
        if sort.descending() {
            o.reverse()
        } else {
            o
        }
    });
    v.into_iter().map(|p| p.id).collect()
}

fn ids(items: &[Product]) -> Vec<ProductId> {
    items.iter().map(|p| p.id).collect()
}

/// Thirty products with repeated prices and names that differ only in case, so every sort has
/// ties that only the id can break.
async fn thirty(db: &Db) -> Vec<Product> {
    let seller = UserId::new();
    let names = [
        "apple", "Banana", "banana", "Cherry", "ÄPFEL", "zebra", "Zebra",
    ];
    let mut out = Vec::new();
    for i in 0..30 {
        let d = draft(
            &format!("SKU-{i:03}"),
            &format!("{} {}", names[i % names.len()], i % 3),
            "",
            "test-items",
            100 * (i as i64 % 4) + 100,
        );
        out.push(create(db, d, seller).await);
    }
    out
}

#[tokio::test]
async fn every_sort_pages_through_everything_exactly_once() {
    let (_t, db) = test_db().await;
    let products = thirty(&db).await;
    for sort in Sort::ALL {
        let expected = sorted(&products, sort);
        for limit in [7, 10, 30, 100] {
            let pages = all_pages(&db, sort, limit).await;
            let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
            let want_pages = 30usize.div_ceil(limit as usize);
            assert_eq!(pages.len(), want_pages, "{sort} limit {limit}: {sizes:?}");
            assert!(pages.iter().all(|p| p.len() <= limit as usize));
            let got: Vec<ProductId> = pages.iter().flat_map(|p| ids(p)).collect();
            assert_eq!(got, expected, "{sort} limit {limit}");
            assert_eq!(got.iter().collect::<HashSet<_>>().len(), 30);
        }
    }
}

#[tokio::test]
async fn newest_pages_neither_repeat_nor_skip_while_products_are_added() {
    let (_t, db) = test_db().await;
    let seller = UserId::new();
    let products = thirty(&db).await;
    let expected = sorted(&products, Sort::Newest);
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut added = 0;
    loop {
        let page = list(
            &db,
            ListParams {
                limit: Some("7".into()),
                cursor: cursor.take(),
                ..Default::default()
            },
        )
        .await;
        seen.extend(ids(&page.items));
        // New products arrive between every two page fetches.
        for _ in 0..3 {
            let d = draft(
                &format!("NEW-{added:03}"),
                "New arrival",
                "",
                "test-items",
                999,
            );
            create(&db, d, seller).await;
            added += 1;
        }
        match page.next {
            Some(c) => cursor = Some(c.encode()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    // The newcomers lead a fresh listing.
    let first = list(&db, ListParams::default()).await;
    assert!(first.items[..added.min(20)]
        .iter()
        .all(|p| p.sku.starts_with("NEW-")));
}

#[tokio::test]
async fn search_needs_every_word_ignores_case_and_escapes_wildcards() {
    let (_t, db) = test_db().await;
    let seller = UserId::new();
    let mut by_sku = std::collections::HashMap::new();
    for (sku, name, description) in [
        ("A-1", "Red Wool Scarf", "Warm winter accessory"),
        ("B-1", "Red Cotton Shirt", "Made of a soft WOOL blend"),
        ("C-1", "Blue Wool Hat", "Cozy"),
        ("D-1", "Scarf", "Red"),
        ("E-1", "WOOLLY RED SOCKS", ""),
        ("F-1", "100% Cotton Tee", ""),
        ("G-1", "1000 Piece Puzzle", "Three cups of patience"),
        ("H-1", "snake_case Mug", ""),
        ("I-1", "CRÈME Brûlée Torch", "🔥 for desserts"),
    ] {
        let p = create(&db, draft(sku, name, description, "misc", 500), seller).await;
        by_sku.insert(p.id, sku);
    }
    let search = |q: &'static str| {
        let db = db.clone();
        let by_sku = by_sku.clone();
        async move {
            let page = list(
                &db,
                ListParams {
                    q: Some(q.into()),
                    sort: Some("name_asc".into()),
                    ..Default::default()
                },
            )
            .await;
            let mut skus: Vec<&str> = page.items.iter().map(|p| by_sku[&p.id]).collect();
            skus.sort_unstable();
            skus
        }
    };
    assert_eq!(search("red wool").await, ["A-1", "B-1", "E-1"]);
    assert_eq!(search("WOOL   RED").await, ["A-1", "B-1", "E-1"]);
    assert_eq!(search("scarf red").await, ["A-1", "D-1"]);
    assert_eq!(search("100%").await, ["F-1"]);
    assert_eq!(search("100").await, ["F-1", "G-1"]);
    assert_eq!(search("e_c").await, ["H-1"]);
    assert_eq!(search("%").await, ["F-1"]);
    assert_eq!(search("_").await, ["H-1"]);
    assert_eq!(search("\\").await, Vec::<&str>::new());
    assert_eq!(search("crème 🔥").await, ["I-1"]);
    assert_eq!(
        search("'; DROP TABLE products; --").await,
        Vec::<&str>::new()
    );
    // The table is still there.
    assert_eq!(search("cotton").await, ["B-1", "F-1"]);
}

#[tokio::test]
async fn filters_combine() {
    let (_t, db) = test_db().await;
    let (alice, bob) = (UserId::new(), UserId::new());
    let a = create(&db, draft("P-1", "One", "", "books", 100), alice).await;
    let b = create(&db, draft("P-2", "Two", "", "books", 200), bob).await;
    let c = create(&db, draft("P-3", "Three", "", "games", 300), alice).await;
    let mut tx = db.begin().await.unwrap();
    service::deactivate(&mut tx, &admin(), c.id, &Cause::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let q = |f: fn(&mut ListParams)| {
        let mut p = ListParams {
            sort: Some("price_asc".into()),
            ..Default::default()
        };
        f(&mut p);
        p
    };
    let got = |page: store::Page| ids(&page.items);
    assert_eq!(got(list(&db, q(|_| {})).await), [a.id, b.id]);
    assert_eq!(
        got(list(&db, q(|p| p.active = Some("false".into()))).await),
        [c.id]
    );
    assert_eq!(
        got(list(&db, q(|p| p.active = Some("all".into()))).await),
        [a.id, b.id, c.id]
    );
    assert_eq!(
        got(list(
            &db,
            q(|p| {
                p.min_price_cents = Some("150".into());
                p.max_price_cents = Some("300".into());
                p.active = Some("all".into());
            })
        )
        .await),
        [b.id, c.id]
    );
    let mut by_alice = q(|p| p.active = Some("all".into()));
    by_alice.seller_id = Some(alice.to_string());
    assert_eq!(got(list(&db, by_alice).await), [a.id, c.id]);
    assert_eq!(
        got(list(&db, q(|p| p.category = Some("books".into()))).await),
        [a.id, b.id]
    );
    // Categories count active products only, and list only categories that have some.
    let cats = store::categories(db.reader()).await.unwrap();
    let cats: Vec<(String, i64)> = cats
        .into_iter()
        .map(|c| (c.slug, c.product_count))
        .collect();
    assert_eq!(cats, [("books".to_owned(), 2)]);
}

fn owner(seller: UserId) -> Principal {
    Principal {
        subject: seller.to_string(),
        role: Role::Seller,
        email: None,
    }
}

fn admin() -> Principal {
    Principal {
        subject: UserId::new().to_string(),
        role: Role::Admin,
        email: None,
    }
}

fn request() -> RequestContext {
    RequestContext {
        request_id: "req-1".into(),
        correlation_id: "corr-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        client_ip: None,
    }
}

#[tokio::test]
async fn every_change_writes_one_event_and_no_change_writes_none() {
    let (_t, db) = test_db().await;
    let seller = UserId::new();
    let ctx = request();
    let mut tx = db.begin().await.unwrap();
    let p = service::create(
        &mut tx,
        draft("EV-1", "Lamp", "Bright", "home", 1000),
        seller,
        &Cause::of_request(&ctx),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let patch = |u: UpdateProduct| ProductPatch::try_from(u).unwrap();
    let apply = |patch: ProductPatch| {
        let db = db.clone();
        let ctx = ctx.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let after = service::update(
                &mut tx,
                &owner(seller),
                p.id,
                &patch,
                &Cause::of_request(&ctx),
            )
            .await;
            tx.commit().await.unwrap();
            after
        }
    };
    // The same values again: nothing to announce.
    let same = apply(patch(UpdateProduct {
        name: Some("Lamp".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(same, p);
    let cheaper = apply(patch(UpdateProduct {
        price_cents: Some(900),
        name: Some("Desk Lamp".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(
        (cheaper.price_cents, cheaper.name.as_str()),
        (900, "Desk Lamp")
    );
    assert!(cheaper.updated_at > p.updated_at);
    // The name change reaches search and the name sort.
    let found = list(
        &db,
        ListParams {
            q: Some("desk".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&found.items), [p.id]);
    apply(patch(UpdateProduct {
        active: Some(false),
        ..Default::default()
    }))
    .await
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    let again = service::deactivate(&mut tx, &owner(seller), p.id, &Cause::of_request(&ctx))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!again.active);
    apply(patch(UpdateProduct {
        active: Some(true),
        ..Default::default()
    }))
    .await
    .unwrap();

    // Another product's sku cannot be taken, by creating or by renaming.
    create(&db, draft("EV-2", "Other", "", "home", 5), seller).await;
    let mut tx = db.begin().await.unwrap();
    let dup = service::create(
        &mut tx,
        draft("EV-2", "Dup", "", "home", 5),
        seller,
        &Cause::default(),
    )
    .await;
    assert!(matches!(dup, Err(service::Error::SkuTaken(s)) if s == "EV-2"));
    drop(tx);
    let taken = apply(patch(UpdateProduct {
        sku: Some("EV-2".into()),
        ..Default::default()
    }))
    .await;
    assert!(matches!(taken, Err(service::Error::SkuTaken(_))));
    let mut tx = db.begin().await.unwrap();
    let missing = service::update(
        &mut tx,
        &admin(),
        ProductId::new(),
        &patch(UpdateProduct {
            name: Some("Nobody".into()),
            ..Default::default()
        }),
        &Cause::default(),
    )
    .await;
    assert!(matches!(missing, Err(service::Error::NotFound(_))));
    drop(tx);

    let outbox = mercato_kit::events::pending(db.reader(), 100)
        .await
        .unwrap();
    let of_p: Vec<_> = outbox
        .iter()
        .filter(|(_, e)| e.aggregate_id == p.id.to_string())
        .map(|(_, e)| e)
        .collect();
    let types: Vec<&str> = of_p.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            events::PRODUCT_CREATED,
            events::PRODUCT_UPDATED,
            events::PRODUCT_DEACTIVATED,
            events::PRODUCT_UPDATED
        ]
    );
    assert!(of_p.iter().all(|e| e.producer == "catalog"
        && e.correlation_id.as_deref() == Some("corr-1")
        && e.traceparent.as_deref() == Some(ctx.traceparent.as_str())));
    // Consumers read payloads through the shared contract; so does this test.
    let payload: events::ProductChanged = mercato_kit::contracts::payload(of_p[1]).unwrap();
    assert_eq!(payload.price_cents, 900);
    assert_eq!(payload.name, "Desk Lamp");
    assert!(payload.active);
    let payload: events::ProductChanged = mercato_kit::contracts::payload(of_p[2]).unwrap();
    assert!(!payload.active);
    // Two products, five events: nothing from the no-ops or the failed writes.
    assert_eq!(outbox.len(), 5);
}

#[tokio::test]
async fn seeding_twice_adds_each_demo_product_once_with_one_event() {
    let (_t, db) = test_db().await;
    assert_eq!(seed::seed_demo(&db).await.unwrap(), 73);
    assert_eq!(seed::seed_demo(&db).await.unwrap(), 0);

    let demo = seed::demo_products().unwrap();
    let everything = list(
        &db,
        ListParams {
            active: Some("all".into()),
            limit: Some("100".into()),
            ..Default::default()
        },
    )
    .await;
    // Newest first is the file's order, every time.
    assert_eq!(ids(&everything.items), ids(&demo));
    assert!(everything
        .items
        .iter()
        .all(|p| p.seller_id == mercato_kit::demo::SELLER.id && p.currency.as_str() == "USD"));

    let outbox = mercato_kit::events::pending(db.reader(), 1000)
        .await
        .unwrap();
    assert_eq!(outbox.len(), 73);
    assert!(outbox
        .iter()
        .all(|(_, e)| e.event_type == events::PRODUCT_CREATED));
    let announced: HashSet<String> = outbox.iter().map(|(_, e)| e.aggregate_id.clone()).collect();
    let seeded: HashSet<String> = demo.iter().map(|p| p.id.to_string()).collect();
    assert_eq!(announced, seeded);

    let cats = store::categories(db.reader()).await.unwrap();
    assert_eq!(cats.len(), 8);
    assert_eq!(cats.iter().map(|c| c.product_count).sum::<i64>(), 73);

    // A demo product renamed by its seller is still that product: not seeded again.
    let first = demo[0].clone();
    let mut tx = db.begin().await.unwrap();
    let patch = ProductPatch::try_from(UpdateProduct {
        sku: Some("RENAMED-1".into()),
        ..Default::default()
    })
    .unwrap();
    service::update(&mut tx, &admin(), first.id, &patch, &Cause::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seed::seed_demo(&db).await.unwrap(), 0);
}

#[tokio::test]
async fn only_the_owner_or_an_admin_changes_a_product_and_a_refusal_writes_nothing() {
    let (_t, db) = test_db().await;
    let (seller, other) = (UserId::new(), UserId::new());
    let p = create(&db, draft("OWN-1", "Lamp", "", "home", 100), seller).await;
    let patch = ProductPatch::try_from(UpdateProduct {
        price_cents: Some(1),
        ..Default::default()
    })
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    let cause = Cause::default();
    let changed = service::update(&mut tx, &owner(other), p.id, &patch, &cause).await;
    assert!(
        matches!(changed, Err(service::Error::Forbidden(f)) if f == Forbidden::NOT_OWNER_CHANGE)
    );
    let gone = service::deactivate(&mut tx, &owner(other), p.id, &cause).await;
    assert!(
        matches!(gone, Err(service::Error::Forbidden(f)) if f == Forbidden::NOT_OWNER_DEACTIVATE)
    );
    let missing = service::update(&mut tx, &admin(), ProductId::new(), &patch, &cause).await;
    assert!(matches!(missing, Err(service::Error::NotFound(_))));
    let by_admin = service::update(&mut tx, &admin(), p.id, &patch, &cause)
        .await
        .unwrap();
    assert_eq!(by_admin.price_cents, 1);
    tx.commit().await.unwrap();
    let outbox = mercato_kit::events::pending(db.reader(), 100)
        .await
        .unwrap();
    let types: Vec<_> = outbox.iter().map(|(_, e)| e.event_type.as_str()).collect();
    assert_eq!(types, [events::PRODUCT_CREATED, events::PRODUCT_UPDATED]);
}

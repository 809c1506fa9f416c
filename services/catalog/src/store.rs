//! The catalog's storage: products read and written, nothing decided. The use cases that
//! change products (and announce them) are in `service`.
//!
//! One SQL text per query serves SQLite and PostgreSQL (sqlx `Any`, `$n` placeholders).
//!
//! Lists page by keyset, never by offset: the next page starts strictly after the last row's
//! (sort key, id), so rows added or removed meanwhile cannot shift items into a repeat or a gap.

use crate::domain::{
    ActiveFilter, CategoryCount, Cursor, Product, ProductQuery, Search, Sort, SortKey,
};
use mercato_kit::db::{get_bool, Tx};
use mercato_kit::db::{parse_uuid, Exec, Pool, Row};
use mercato_kit::ids::{ProductId, UserId};

// ---------------------------------------------------------------------------------------------
// Reads.

const COLUMNS: &str = "id, sku, name, description, category, price_cents, currency, seller_id, \
                       active, created_at, updated_at";

fn from_row(row: &Row) -> Result<Product, mercato_kit::db::Error> {
    let currency: String = row.try_get("currency")?;
    Ok(Product {
        id: ProductId(parse_uuid(&row.try_get::<String, _>("id")?)?),
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        category: row.try_get("category")?,
        price_cents: row.try_get("price_cents")?,
        currency: currency
            .parse()
            .map_err(|e: String| mercato_kit::db::Error::ColumnDecode {
                index: "currency".into(),
                source: e.into(),
            })?,
        seller_id: UserId(parse_uuid(&row.try_get::<String, _>("seller_id")?)?),
        active: get_bool(row, "active")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// One product, active or not.
pub async fn get<'e, E: Into<Exec<'e>>>(
    ex: E,
    id: ProductId,
) -> Result<Option<Product>, mercato_kit::db::Error> {
    let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
    mercato_kit::db::query(&sql)
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// Reads a product to change it, holding it against concurrent writers until the transaction
/// ends. PostgreSQL needs `FOR UPDATE` for that; SQLite has no such clause and needs none,
/// since its writes already run one transaction at a time.
pub async fn lock(tx: &mut Tx, id: ProductId) -> Result<Option<Product>, mercato_kit::db::Error> {
    let for_update = if tx.backend() == mercato_kit::db::Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1{for_update}");
    mercato_kit::db::query(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// A page of a list, and where the next one starts (`None` on the last page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Product>,
    pub next: Option<Cursor>,
}

enum Arg {
    Int(i64),
    Text(String),
}

/// One `LIKE … ESCAPE '\'` pattern per search word, matching it anywhere.
fn like_patterns(search: &Search) -> Vec<String> {
    search
        .words()
        .iter()
        .map(|w| format!("%{}%", escape_like(w)))
        .collect()
}

/// Escapes LIKE's wildcards so a searched `%` or `_` means itself.
fn escape_like(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A WHERE clause under construction, numbering its placeholders as they are added.
#[derive(Default)]
struct Filter {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Filter {
    fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }
}

pub async fn list(pool: &Pool, q: &ProductQuery) -> Result<Page, mercato_kit::db::Error> {
    let mut f = Filter::default();
    match q.active {
        ActiveFilter::Active => f.clauses.push("active = 1".into()),
        ActiveFilter::Inactive => f.clauses.push("active = 0".into()),
        ActiveFilter::All => {}
    }
    for pattern in like_patterns(&q.search) {
        let p = f.bind(Arg::Text(pattern));
        f.clauses.push(format!("search_text LIKE {p} ESCAPE '\\'"));
    }
    if let Some(c) = &q.category {
        let p = f.bind(Arg::Text(c.as_str().to_owned()));
        f.clauses.push(format!("category = {p}"));
    }
    if let Some(min) = q.min_price_cents {
        let p = f.bind(Arg::Int(min));
        f.clauses.push(format!("price_cents >= {p}"));
    }
    if let Some(max) = q.max_price_cents {
        let p = f.bind(Arg::Int(max));
        f.clauses.push(format!("price_cents <= {p}"));
    }
    if let Some(s) = q.seller_id {
        let p = f.bind(Arg::Text(s.to_string()));
        f.clauses.push(format!("seller_id = {p}"));
    }
    let column = match q.sort {
        Sort::Newest => "created_at",
        Sort::PriceAsc | Sort::PriceDesc => "price_cents",
        Sort::NameAsc | Sort::NameDesc => "name_key",
    };
    let (direction, past) = if q.sort.descending() {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    if let Some(after) = &q.after {
        let key = f.bind(match &after.key {
            SortKey::Int(n) => Arg::Int(*n),
            SortKey::Text(s) => Arg::Text(s.clone()),
        });
        let id = f.bind(Arg::Text(after.id.to_string()));
        f.clauses
            .push(format!("({column}, id) {past} ({key}, {id})"));
    }
    // One row more than asked tells whether another page follows.
    let limit = f.bind(Arg::Int(i64::from(q.limit) + 1));
    let filter = if f.clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", f.clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM products {filter} \
         ORDER BY {column} {direction}, id {direction} LIMIT {limit}"
    );
    let mut query = mercato_kit::db::query(&sql);
    for arg in f.args {
        query = match arg {
            Arg::Int(n) => query.bind(n),
            Arg::Text(s) => query.bind(s),
        };
    }
    let mut items = query
        .fetch_all(pool)
        .await?
        .iter()
        .map(from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > q.limit as usize {
        items.truncate(q.limit as usize);
        items.last().map(|p| Cursor::after(p, q.sort))
    } else {
        None
    };
    Ok(Page { items, next })
}

/// Every category with at least one active product, by slug.
pub async fn categories(pool: &Pool) -> Result<Vec<CategoryCount>, mercato_kit::db::Error> {
    mercato_kit::db::query(
        "SELECT category, COUNT(*) AS product_count FROM products WHERE active = 1 \
         GROUP BY category ORDER BY category",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(CategoryCount {
            slug: r.try_get("category")?,
            product_count: r.try_get("product_count")?,
        })
    })
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Writes.

const INSERT: &str = "INSERT INTO products (id, sku, name, name_key, description, search_text, \
                      category, price_cents, currency, seller_id, active, created_at, updated_at) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

fn bind_insert<'q>(sql: &'q str, p: &Product) -> mercato_kit::db::Query<'q> {
    mercato_kit::db::query(sql)
        .bind(p.id.to_string())
        .bind(p.sku.clone())
        .bind(p.name.clone())
        .bind(p.name_key())
        .bind(p.description.clone())
        .bind(p.search_text())
        .bind(p.category.clone())
        .bind(p.price_cents)
        .bind(p.currency.to_string())
        .bind(p.seller_id.to_string())
        .bind(i64::from(p.active))
        .bind(p.created_at)
        .bind(p.updated_at)
}

/// Inserts a new product; a unique violation when another product has its sku.
pub async fn insert(tx: &mut Tx, p: &Product) -> Result<(), mercato_kit::db::Error> {
    bind_insert(INSERT, p).execute(&mut **tx).await?;
    Ok(())
}

/// Inserts a product unless its id or its sku exists already; true when inserted.
pub async fn insert_new(tx: &mut Tx, p: &Product) -> Result<bool, mercato_kit::db::Error> {
    let sql = format!("{INSERT} ON CONFLICT DO NOTHING");
    let added = bind_insert(&sql, p).execute(&mut **tx).await?;
    Ok(added.rows_affected() != 0)
}

/// Writes a product's new state over its row; a unique violation when the new sku is another
/// product's.
pub async fn write(tx: &mut Tx, p: &Product) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "UPDATE products SET sku = $2, name = $3, name_key = $4, description = $5, \
         search_text = $6, category = $7, price_cents = $8, currency = $9, active = $10, \
         updated_at = $11 WHERE id = $1",
    )
    .bind(p.id.to_string())
    .bind(p.sku.clone())
    .bind(p.name.clone())
    .bind(p.name_key())
    .bind(p.description.clone())
    .bind(p.search_text())
    .bind(p.category.clone())
    .bind(p.price_cents)
    .bind(p.currency.to_string())
    .bind(i64::from(p.active))
    .bind(p.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn searched_wildcards_mean_themselves() {
        let s = Search::parse("100% under_score back\\slash").unwrap();
        assert_eq!(
            like_patterns(&s),
            ["%100\\%%", "%under\\_score%", "%back\\\\slash%"]
        );
        let s = Search::parse("'; DROP TABLE products; --").unwrap();
        assert_eq!(like_patterns(&s)[0], "%';%");
        let s = Search::parse("Crème 🧣").unwrap();
        assert_eq!(like_patterns(&s), ["%crème%", "%🧣%"]);
    }

    proptest! {
        #[test]
        fn every_inner_wildcard_is_escaped(q in ".{0,250}") {
            if let Ok(s) = Search::parse(&q) {
                for p in like_patterns(&s) {
                    // Every wildcard in a pattern, except the outer two, is escaped.
                    let inner = &p[1..p.len() - 1];
                    let mut escaped = false;
                    for c in inner.chars() {
                        if escaped { escaped = false; continue; }
                        prop_assert!(c != '%' && c != '_');
                        escaped = c == '\\';
                    }
                    prop_assert!(!escaped);
                }
            }
        }
    }
}

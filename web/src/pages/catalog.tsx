// The storefront's catalog: search words, a category, a price sort, and cursor pages
// ("Load more"). The filters live in the address (?q=&category=&sort=), so a search can be
// shared, reloaded and gone back to.

import { useEffect, useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import type { Schemas } from "../api/client";
import { api } from "../app-context";
import { formatMoney } from "../lib/money";
import { Button, Empty, Field, LoadMore, Loading, PageTitle, ProblemNotice, Select } from "../components/ui";
import { usePages } from "../lib/use-pages";

type Product = Schemas["ProductBody"];
type Category = Schemas["CategoryBody"];

const SORTS = [
  { value: "newest", label: "Newest" },
  { value: "price_asc", label: "Price: low to high" },
  { value: "price_desc", label: "Price: high to low" },
  { value: "name_asc", label: "Name: A to Z" },
];

export function Catalog() {
  const { query, route } = useLocation();
  const q = query.q ?? "";
  const category = query.category ?? "";
  const sort = query.sort ?? "newest";
  const [words, setWords] = useState(q);
  const [categories, setCategories] = useState<Category[]>([]);
  const { items, next, busy, problem, loadMore } = usePages<Product>(
    (cursor) =>
      api.GET("/api/v1/products", {
        params: {
          query: {
            q: q || undefined,
            category: category || undefined,
            sort,
            limit: "12",
            cursor: cursor ?? undefined,
          } as any,
        },
      }),
    [q, category, sort],
  );

  useEffect(() => {
    api.GET("/api/v1/categories").then(({ data }) => data && setCategories(data.items));
  }, []);
  useEffect(() => setWords(q), [q]);

  function apply(change: Record<string, string>) {
    const params = new URLSearchParams({ q, category, sort, ...change });
    for (const [k, v] of [...params]) if (!v || (k === "sort" && v === "newest")) params.delete(k);
    const s = params.toString();
    route(s ? `/?${s}` : "/", true);
  }

  return (
    <section aria-labelledby="catalog-title">
      <PageTitle>
        <span id="catalog-title">Shop</span>
      </PageTitle>
      <form
        class="filters"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          apply({ q: words.trim() });
        }}
      >
        <Field label="Search" name="q" type="search" value={words} onInput={setWords} problem={problem} />
        <Select
          label="Category"
          value={category}
          onChange={(v) => apply({ category: v })}
          options={[
            { value: "", label: "All categories" },
            ...categories.map((c) => ({ value: c.slug, label: `${c.slug.replace(/-/g, " ")} (${c.product_count})` })),
          ]}
        />
        <Select label="Sort by" value={sort} onChange={(v) => apply({ sort: v })} options={SORTS} />
        <Button type="submit">Search</Button>
      </form>
      <ProblemNotice problem={problem} shown={["q"]} />
      {items === null ? (
        <Loading what="Loading products" />
      ) : items.length === 0 ? (
        <Empty title="No products match">
          <p>Try other words or another category.</p>
        </Empty>
      ) : (
        <>
          <ul class="grid" aria-label="Products">
            {items.map((p) => (
              <li class="card">
                <a href={`/products/${p.id}`} class="card-link">
                  <span class="card-category">{p.category.replace(/-/g, " ")}</span>
                  <span class="card-name">{p.name}</span>
                  <span class="card-price">{formatMoney(p.price_cents, p.currency)}</span>
                </a>
              </li>
            ))}
          </ul>
          <LoadMore next={next} busy={busy} onLoad={loadMore} />
        </>
      )}
    </section>
  );
}

// The seller's products: every one they own, on sale or not, with its stock.

import { useEffect, useState } from "preact/hooks";
import type { Schemas } from "../../api/client";
import { api } from "../../app-context";
import { type Problem, offline } from "../../api/problem";
import { session } from "../../app-context";
import { RequireRole } from "../../components/layout";
import { formatMoney } from "../../lib/money";
import { Button, Empty, Loading, PageTitle, ProblemNotice } from "../../components/ui";

type Product = Schemas["ProductBody"];
type Stock = Schemas["StockView"];

export function SellerProducts() {
  return (
    <RequireRole roles={["SELLER", "ADMIN"]}>
      <Products />
    </RequireRole>
  );
}

function Products() {
  const me = session.user.value!;
  const [items, setItems] = useState<Product[] | null>(null);
  const [stock, setStock] = useState<Record<string, Stock | null>>({});
  const [next, setNext] = useState<string | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);

  async function load(cursor: string | null) {
    setBusy(true);
    try {
      const { data, error } = await api.GET("/api/v1/products", {
        params: {
          query: {
            ...(me.role === "SELLER" ? { seller_id: me.id } : {}),
            active: "all",
            sort: "newest",
            limit: "20",
            cursor: cursor ?? undefined,
          } as any,
        },
      });
      if (error) return setProblem(error as Problem);
      setItems((prev) => (cursor && prev ? [...prev, ...data.items] : data.items));
      setNext(data.next_cursor ?? null);
      const levels = await Promise.all(
        data.items.map((p) =>
          api
            .GET("/api/v1/inventory/{product_id}", { params: { path: { product_id: p.id } } })
            .then(({ data }) => [p.id, data ?? null] as const, () => [p.id, null] as const),
        ),
      );
      setStock((s) => ({ ...s, ...Object.fromEntries(levels) }));
    } catch (e) {
      setProblem(offline(e));
    } finally {
      setBusy(false);
    }
  }
  useEffect(() => {
    load(null);
  }, []);

  return (
    <section aria-labelledby="seller-title">
      <div class="title-row">
        <PageTitle>
          <span id="seller-title">My products</span>
        </PageTitle>
        <a class="btn btn-primary" href="/seller/products/new">
          New product
        </a>
      </div>
      <ProblemNotice problem={problem} />
      {items === null ? (
        <Loading what="Loading your products" />
      ) : items.length === 0 ? (
        <Empty title="You have no products yet">
          <p>
            <a href="/seller/products/new">Create your first product</a>
          </p>
        </Empty>
      ) : (
        <>
          <table class="table">
            <thead>
              <tr>
                <th scope="col">Product</th>
                <th scope="col">SKU</th>
                <th scope="col" class="num">
                  Price
                </th>
                <th scope="col">Sale</th>
                <th scope="col" class="num">
                  On hand
                </th>
                <th scope="col" class="num">
                  Reserved
                </th>
                <th scope="col" class="num">
                  Available
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((p) => {
                const s = stock[p.id];
                return (
                  <tr data-testid="seller-product">
                    <th scope="row">
                      <a href={`/seller/products/${p.id}`}>{p.name}</a>
                    </th>
                    <td>
                      <code>{p.sku}</code>
                    </td>
                    <td class="num">{formatMoney(p.price_cents, p.currency)}</td>
                    <td>{p.active ? "On sale" : <span class="tag">Off sale</span>}</td>
                    <td class="num">{s ? s.on_hand : "—"}</td>
                    <td class="num">{s ? s.reserved : "—"}</td>
                    <td class="num">{s ? s.available : "—"}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          {next && (
            <div class="more">
              <Button variant="secondary" busy={busy} onClick={() => load(next)}>
                Load more
              </Button>
            </div>
          )}
        </>
      )}
    </section>
  );
}

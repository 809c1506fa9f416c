// The seller's products: every one they own, on sale or not, with its stock.

import { useState } from "preact/hooks";
import type { Schemas } from "../../api/client";
import { api } from "../../app-context";
import { session } from "../../app-context";
import { RequireRole } from "../../components/layout";
import { formatMoney } from "../../lib/money";
import { Empty, LoadMore, Loading, PageTitle, ProblemNotice } from "../../components/ui";
import { usePages } from "../../lib/use-pages";

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
  const [stock, setStock] = useState<Record<string, Stock | null>>({});
  const { items, next, busy, problem, loadMore } = usePages<Product>(async (cursor) => {
    const page = await api.GET("/api/v1/products", {
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
    if (page.data) {
      const levels = await Promise.all(
        page.data.items.map((p) =>
          api
            .GET("/api/v1/inventory/{product_id}", { params: { path: { product_id: p.id } } })
            .then(({ data }) => [p.id, data ?? null] as const, () => [p.id, null] as const),
        ),
      );
      setStock((s) => ({ ...s, ...Object.fromEntries(levels) }));
    }
    return page;
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
          <LoadMore next={next} busy={busy} onLoad={loadMore} />
        </>
      )}
    </section>
  );
}

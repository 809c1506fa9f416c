// A seller's product: create it (with its first stock, set at once: the inventory knows a
// product as soon as the catalog answered 201), edit it, take it off sale or back on, set its
// stock and read its stock ledger. Every refusal is shown beside the field it names.

import { useEffect, useState } from "preact/hooks";
import { useRoute } from "preact-iso";
import type { Schemas } from "../../api/client";
import { api } from "../../app-context";
import { type Problem, offline } from "../../api/problem";
import { go } from "../../app-context";
import { RequireRole } from "../../components/layout";
import { formatMoney, parseMoney } from "../../lib/money";
import { Button, Field, Loading, Notice, PageTitle, ProblemNotice } from "../../components/ui";

type Product = Schemas["ProductBody"];
type Stock = Schemas["StockView"];
type Entry = Schemas["LedgerView"];

interface Form {
  sku: string;
  name: string;
  description: string;
  category: string;
  price: string;
  stock: string;
}

const FIELDS = ["sku", "name", "description", "category", "price_cents", "on_hand"];

export function SellerProduct() {
  return (
    <RequireRole roles={["SELLER", "ADMIN"]}>
      <ProductEditor />
    </RequireRole>
  );
}

function fromProduct(p: Product): Form {
  return {
    sku: p.sku,
    name: p.name,
    description: p.description,
    category: p.category,
    price: (p.price_cents / 100).toFixed(2),
    stock: "",
  };
}

/** The page's own checks, before anything is sent; the server checks everything again. */
export function checkForm(f: Form, creating: boolean): Record<string, string> {
  const e: Record<string, string> = {};
  if (parseMoney(f.price) === null) e.price_cents = "Enter a price like 12.50";
  if (creating && f.stock.trim() && !/^\d+$/.test(f.stock.trim())) e.on_hand = "Enter a whole number of units";
  return e;
}

function ProductEditor() {
  const { params } = useRoute();
  const id: string | undefined = params.id;
  const creating = !id;
  const [product, setProduct] = useState<Product | null>(null);
  const [form, setForm] = useState<Form>({ sku: "", name: "", description: "", category: "", price: "", stock: "" });
  const [local, setLocal] = useState<Record<string, string>>({});
  const [problem, setProblem] = useState<Problem | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [categories, setCategories] = useState<string[]>([]);

  useEffect(() => {
    api.GET("/api/v1/categories").then(({ data }) => data && setCategories(data.items.map((c) => c.slug)));
  }, []);
  useEffect(() => {
    setProblem(null);
    setSaved(null);
    if (!id) {
      setProduct(null);
      return;
    }
    api.GET("/api/v1/products/{id}", { params: { path: { id } } }).then(({ data, error }) => {
      if (error) setProblem(error as Problem);
      else {
        setProduct(data);
        setForm(fromProduct(data));
      }
    });
  }, [id]);

  const set = (k: keyof Form) => (v: string) => setForm({ ...form, [k]: v });

  async function save(e: Event) {
    e.preventDefault();
    const errors = checkForm(form, creating);
    setLocal(errors);
    setSaved(null);
    if (Object.keys(errors).length) return;
    setBusy(true);
    setProblem(null);
    const body = {
      sku: form.sku.trim(),
      name: form.name.trim(),
      description: form.description,
      category: form.category.trim(),
      price_cents: parseMoney(form.price)!,
    };
    try {
      if (creating) {
        const { data, error } = await api.POST("/api/v1/products", { body });
        if (error) return setProblem(error as Problem);
        const units = form.stock.trim();
        if (units) {
          const r = await api.PUT("/api/v1/inventory/{product_id}", {
            params: { path: { product_id: data.id } },
            body: { on_hand: Number(units), note: "initial stock" },
          });
          if (r.error) {
            go(`/seller/products/${data.id}`, true);
            return setProblem(r.error as Problem);
          }
        }
        go(`/seller/products/${data.id}`, true);
      } else {
        const { data, error } = await api.PUT("/api/v1/products/{id}", { params: { path: { id: id! } }, body });
        if (error) return setProblem(error as Problem);
        setProduct(data);
        setSaved("Saved.");
      }
    } catch (err) {
      setProblem(offline(err));
    } finally {
      setBusy(false);
    }
  }

  async function setActive(active: boolean) {
    if (!id) return;
    setBusy(true);
    setProblem(null);
    const r = active
      ? await api.PUT("/api/v1/products/{id}", { params: { path: { id } }, body: { active: true } })
      : await api.DELETE("/api/v1/products/{id}", { params: { path: { id } } });
    setBusy(false);
    if (r.error) return setProblem(r.error as Problem);
    const { data } = await api.GET("/api/v1/products/{id}", { params: { path: { id } } });
    if (data) setProduct(data);
    setSaved(active ? "Back on sale." : "Taken off sale.");
  }

  if (id && !product) return problem ? <ProblemNotice problem={problem} /> : <Loading what="Loading the product" />;
  return (
    <section aria-labelledby="product-title">
      <p class="crumbs">
        <a href="/seller">My products</a>
      </p>
      <PageTitle>
        <span id="product-title">{creating ? "New product" : product!.name}</span>
      </PageTitle>
      {product && (
        <p>
          {product.active ? "On sale" : <span class="tag">Off sale</span>} · {formatMoney(product.price_cents, product.currency)} ·{" "}
          <a href={`/products/${product.id}`}>See it in the shop</a>
        </p>
      )}
      <div class="two-col">
        <form class="stack" onSubmit={save} noValidate aria-label="Product details">
          <Field label="SKU" name="sku" value={form.sku} onInput={set("sku")} problem={problem} hint="Letters, digits and dashes, unique in the shop." />
          <Field label="Name" name="name" value={form.name} onInput={set("name")} problem={problem} />
          <Field label="Description" name="description" value={form.description} onInput={set("description")} problem={problem} multiline />
          <Field label="Category" name="category" value={form.category} onInput={set("category")} problem={problem} list="categories" hint="A slug like home-kitchen." />
          <datalist id="categories">
            {categories.map((c) => (
              <option value={c} />
            ))}
          </datalist>
          <Field label="Price (USD)" name="price_cents" inputMode="decimal" value={form.price} onInput={set("price")} problem={problem} error={local.price_cents} />
          {creating && (
            <Field label="Initial stock (units)" name="on_hand" inputMode="numeric" value={form.stock} onInput={set("stock")} problem={problem} error={local.on_hand} />
          )}
          <ProblemNotice problem={problem} shown={FIELDS} />
          {saved && <Notice kind="success">{saved}</Notice>}
          <div class="row">
            <Button type="submit" busy={busy}>
              {creating ? "Create product" : "Save changes"}
            </Button>
            {product &&
              (product.active ? (
                <Button variant="danger" busy={busy} onClick={() => setActive(false)}>
                  Take off sale
                </Button>
              ) : (
                <Button variant="secondary" busy={busy} onClick={() => setActive(true)}>
                  Put back on sale
                </Button>
              ))}
          </div>
        </form>
        {product && <StockPanel productId={product.id} />}
      </div>
    </section>
  );
}

function StockPanel({ productId }: { productId: string }) {
  const [stock, setStock] = useState<Stock | null | undefined>(undefined);
  const [ledger, setLedger] = useState<Entry[]>([]);
  const [onHand, setOnHand] = useState("");
  const [note, setNote] = useState("");
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);
  const [saved, setSaved] = useState<string | null>(null);

  async function load() {
    const [s, l] = await Promise.all([
      api.GET("/api/v1/inventory/{product_id}", { params: { path: { product_id: productId } } }),
      api.GET("/api/v1/inventory/{product_id}/ledger", { params: { path: { product_id: productId }, query: { limit: 100 } as any } }),
    ]);
    setStock(s.data ?? null);
    if (s.data) setOnHand(String(s.data.on_hand));
    setLedger(l.data?.items ?? []);
  }
  useEffect(() => {
    load();
  }, [productId]);

  async function submit(e: Event) {
    e.preventDefault();
    setSaved(null);
    if (!/^\d+$/.test(onHand.trim())) return setProblem({ errors: [{ field: "on_hand", message: "Enter a whole number of units" }] });
    setBusy(true);
    setProblem(null);
    try {
      const { data, error } = await api.PUT("/api/v1/inventory/{product_id}", {
        params: { path: { product_id: productId } },
        body: { on_hand: Number(onHand.trim()), note: note.trim() || undefined },
      });
      if (error) return setProblem(error as Problem);
      setStock(data);
      setNote("");
      setSaved("Stock saved.");
      await load();
    } catch (err) {
      setProblem(offline(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <section class="panel" aria-labelledby="stock-title">
      <h2 id="stock-title">Stock</h2>
      {stock === undefined ? (
        <Loading what="Loading stock" />
      ) : (
        <dl class="levels" data-testid="stock-levels">
          <div>
            <dt>On hand</dt>
            <dd data-testid="on-hand">{stock?.on_hand ?? 0}</dd>
          </div>
          <div>
            <dt>Reserved</dt>
            <dd data-testid="reserved">{stock?.reserved ?? 0}</dd>
          </div>
          <div>
            <dt>Available</dt>
            <dd data-testid="available">{stock?.available ?? 0}</dd>
          </div>
        </dl>
      )}
      <form class="stack" onSubmit={submit} noValidate aria-label="Set stock">
        <Field label="Set on hand to" name="on_hand" inputMode="numeric" value={onHand} onInput={setOnHand} problem={problem} />
        <Field label="Note for the ledger (optional)" name="note" value={note} onInput={setNote} problem={problem} />
        <ProblemNotice problem={problem} shown={["on_hand", "note"]} />
        {saved && <Notice kind="success">{saved}</Notice>}
        <Button type="submit" busy={busy}>
          Save stock
        </Button>
      </form>
      <h3>Stock ledger</h3>
      {ledger.length === 0 ? (
        <p class="hint">No movements yet.</p>
      ) : (
        <table class="table ledger">
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Kind</th>
              <th scope="col" class="num">
                On hand
              </th>
              <th scope="col" class="num">
                Reserved
              </th>
              <th scope="col">Note</th>
            </tr>
          </thead>
          <tbody>
            {ledger.map((e) => (
              <tr>
                <td>{new Date(e.created_at).toLocaleString()}</td>
                <td>{e.kind}</td>
                <td class="num">
                  {e.on_hand_after} ({signed(e.on_hand_delta)})
                </td>
                <td class="num">
                  {e.reserved_after} ({signed(e.reserved_delta)})
                </td>
                <td>{e.note ?? (e.order_id ? `order ${e.order_id.slice(-8)}` : "")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function signed(n: number): string {
  return n > 0 ? `+${n}` : String(n);
}
